import sys

from pneumonia_cli import main

sys.exit(main())
