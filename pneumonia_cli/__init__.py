"""`pneumonia VERB ...`: the project's one command line. Research use only; not a medical device.

Each verb hands its arguments to the module that owns it, so `pneumonia train ...` is exactly
`python -m training train ...` and `pneumonia score ...` is `python -m app.score ...` (both kept as aliases).
This package is the only place that knows every entry point; the library `pneumonia` imports none of them.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

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
# `pneumonia VERB SUB ...`: a verb's further tools, each still runnable as `python -m MODULE`
SUBVERBS: dict[str, dict[str, tuple[str, str]]] = {
    "bench": {
        "explain": ("bench.explain.run", "how faithful each explanation method is (deletion/insertion, baselines)"),
        "explain-latency": ("bench.explain.latency", "what /explain costs against /predict over HTTP, per method"),
        "ood": ("bench.ood", "what the input check refuses and accepts, on validation and non-X-ray images"),
        "sessions": ("bench.sessions", "the inference session designs, measured in-process"),
    },
}


# Not installed (pyproject.toml packages): found beside this package in a clone, which an editable install runs from
CLONE_ONLY = ("bench",)


def _clone_on_path(module_name: str) -> None:
    """Let the console script import a clone-only package, as `python -m` from the clone's root would."""
    root, package = Path(__file__).resolve().parent.parent, module_name.partition(".")[0]
    if package in CLONE_ONLY and (root / package).is_dir() and str(root) not in sys.path:
        sys.path.append(str(root))


def usage() -> str:
    width = max(len(name) for name in [*VERBS, *(f"{verb} {sub}" for verb, subs in SUBVERBS.items() for sub in subs)])
    lines = []
    for verb, (_, _, what) in VERBS.items():
        lines.append(f"  {verb:<{width}}  {what}")
        lines += [f"  {verb + ' ' + sub:<{width}}  {about}" for sub, (_, about) in SUBVERBS.get(verb, {}).items()]
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
    if rest and rest[0] in SUBVERBS.get(verb, {}):
        (module_name, _), prefix, rest = SUBVERBS[verb][rest[0]], (), rest[1:]
    _clone_on_path(module_name)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:  # the training verbs' own parser (training.cli) handles their extras
        print(f"pneumonia {verb}: {exc.name} is not installed here; training verbs need "
              "`pip install -c constraints.txt -e '.[training]'`, bench needs a clone with '.[bench]'",
              file=sys.stderr)  # fmt: skip
        return 2
    entry: Callable[[list[str]], int] = module.main
    return int(entry([*prefix, *rest]) or 0)
