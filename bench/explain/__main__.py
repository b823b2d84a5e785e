import sys

from bench.explain.run import main

sys.exit(main(sys.argv[1:]))
