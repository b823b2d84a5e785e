"""`pneumonia VERB ...`: the project's one command line. Research use only; not a medical device.

Each verb hands its arguments to the module that owns it, so `pneumonia train ...` is exactly
`python -m training train ...` and `pneumonia score ...` is `python -m app.score ...` (both kept as aliases).
This package is the only place that knows every entry point; the library `pneumonia` imports none of them.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence

# verb -> (module with a `main(argv)`, arguments put before the user's, what it does)
TRAINING_VERBS = ("train", "evaluate", "export", "input-check", "population-check", "adapt", "calibrate",
                  "site-report", "publish")  # fmt: skip
VERBS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "serve": ("app.serve", (), "run the HTTP service (the page, /predict, /explain, /docs)"),
    "score": ("app.score", (), "score a folder in-process into a CSV, as /predict would answer"),
    "pacs": ("app.pacs", (), "score chest radiographs in a PACS over DICOMweb and store SR/SC results back"),
    "keys": ("app.keys", (), "make an API key: prints the token once and the line for the keys file"),
    "bench": ("bench.cli", (), "measure the service's latency and throughput (from a clone)"),
    **{verb: ("training.cli", (verb,), "training: see `pneumonia " + verb + " --help`") for verb in TRAINING_VERBS},
}


def usage() -> str:
    width = max(len(v) for v in VERBS)
    lines = [f"  {verb:<{width}}  {what}" for verb, (_, _, what) in VERBS.items()]
    return (
        "usage: pneumonia VERB [ARGS...]\n\nverbs:\n"
        + "\n".join(lines)
        + "\n\nRESEARCH USE ONLY: not a medical device."
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return 0 if args else 2
    verb, rest = args[0], args[1:]
    if verb not in VERBS:
        print(f"pneumonia: unknown verb {verb!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module_name, prefix, _ = VERBS[verb]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:  # the training verbs' own parser (training.cli) handles their extras
        print(f"pneumonia {verb}: {exc.name} is not installed here; training verbs need "
              "`pip install -c constraints.txt -e '.[training]'`, bench needs a clone with '.[bench]'",
              file=sys.stderr)  # fmt: skip
        return 2
    entry: Callable[[list[str]], int] = module.main
    return int(entry([*prefix, *rest]) or 0)
