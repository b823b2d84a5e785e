"""`python -m training {train,evaluate,export,publish}`: the offline half of the product."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from app.bundle import PARITY_TOLERANCE
from training.config import ConfigError, load_config
from training.data import DatasetError
from training.run import CONFIG_FILE

log = logging.getLogger("training")


class UsageError(RuntimeError):
    """A problem with the user's arguments or files, reported without a traceback."""


def _setup_logging(run_dir: Path | None) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(run_dir / "training.log"))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", handlers=handlers, force=True)


def cmd_train(args: argparse.Namespace) -> int:
    from training import run as run_module

    run_dir = Path(args.out)
    _setup_logging(run_dir)
    overrides = {
        "models": args.models,
        "image_size": args.image_size,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "weights": args.weights,
        "seed": args.seed,
        "budget_minutes": args.budget_minutes,
    }
    saved = run_dir / CONFIG_FILE
    config = load_config(Path(args.config) if args.config else (saved if saved.is_file() else None), overrides)
    if saved.is_file():
        # Resuming: a resumed run may not silently change its recipe.
        recorded = load_config(saved, {})
        if config != recorded:
            differences = {k: v for k, v in config.model_dump().items() if recorded.model_dump()[k] != v}
            raise UsageError(f"{run_dir} holds a run with another configuration (differs in {differences}); use a new --out")
        log.info("resuming the run in %s", run_dir)
    run_module.train_run(Path(args.data), run_dir, config, evaluate=not args.no_evaluate)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from training import run as run_module

    run_dir = Path(args.run)
    _setup_logging(run_dir)
    run_module.evaluate_run(run_dir, Path(args.data) if args.data else None)
    return 0


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be greater than 0")
    return value


def cmd_export(args: argparse.Namespace) -> int:
    from training import export

    run_dir = Path(args.run)
    _setup_logging(None)
    bundle = export.export_bundle(
        run_dir,
        Path(args.out),
        model_name=args.model,
        operating_point=args.operating_point,
        parity_tolerance=args.parity_tolerance,
    )
    print(f"bundle written to {bundle}")
    return 0


def cmd_publish(args: argparse.Namespace) -> int:
    from training.run import publish_run

    copied = publish_run(Path(args.run), Path(args.out))
    print(f"{len(copied)} files copied to {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train one or more backbones on a folder-split dataset")
    train.add_argument("--data", required=True, help="dataset root with train/ (and optional val/, test/)")
    train.add_argument("--out", required=True, help="run directory (created; rerun the same command to resume)")
    train.add_argument("--models", help="comma-separated: densenet121,resnet50,efficientnetb0,mobilenetv2")
    train.add_argument("--image-size", type=int)
    train.add_argument("--epochs", type=int)
    train.add_argument("--batch-size", type=int)
    train.add_argument("--weights", help="imagenet | none | PATH to a local backbone weights file")
    train.add_argument("--seed", type=int)
    train.add_argument("--budget-minutes", type=float, help="equal wall-clock training budget per backbone")
    train.add_argument("--config", help="TOML or JSON file of TrainConfig fields; flags override it")
    train.add_argument("--no-evaluate", action="store_true", help="skip evaluation and reports after training")
    train.set_defaults(func=cmd_train)

    evaluate = sub.add_parser("evaluate", help="metrics, operating points, plots and comparison for a run")
    evaluate.add_argument("--run", required=True)
    evaluate.add_argument("--data", help="dataset root (default: the one the run was trained on)")
    evaluate.set_defaults(func=cmd_evaluate)

    export = sub.add_parser("export", help="write the model bundle (ONNX + Keras + metadata + card)")
    export.add_argument("--run", required=True)
    export.add_argument("--out", required=True, help="bundle directory to write")
    export.add_argument("--model", help="backbone to export (default: best validation ROC-AUC of the run)")
    export.add_argument("--operating-point", help="default operating point (default: the run's configuration)")
    export.add_argument(
        "--parity-tolerance",
        type=_positive_float,
        default=PARITY_TOLERANCE,
        help=f"largest accepted |P_onnx - P_keras| on validation images (default: {PARITY_TOLERANCE:g})",
    )
    export.set_defaults(func=cmd_export)

    publish = sub.add_parser("publish", help="copy a run's evidence (config, split, logs, metrics, plots) for committing")
    publish.add_argument("--run", required=True)
    publish.add_argument("--out", required=True, help="e.g. results/NAME")
    publish.set_defaults(func=cmd_publish)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = build_parser().parse_args(argv)
    started = time.monotonic()
    try:
        code = args.func(args)
    except (UsageError, ConfigError, DatasetError, *_domain_errors()) as exc:  # the user's to fix: no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2
    log.info("%s finished in %.1f s", args.command, time.monotonic() - started)
    return code


def _domain_errors() -> tuple[type[Exception], ...]:
    # Imported only once an error is on its way: these modules pull in TensorFlow.
    from app.bundle import BundleError
    from training.backbones import WeightsError
    from training.export import ExportError

    return (WeightsError, ExportError, BundleError)


if __name__ == "__main__":
    sys.exit(main())
