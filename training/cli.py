"""`python -m training {train,evaluate,export,publish}`: the offline half of the product."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pneumonia.bundle import PARITY_TOLERANCE
from pneumonia.model import import_tensorflow_quietly
from training import layout
from training.config import BACKBONE_NAMES, TrainConfig, load_config
from training.errors import TrainingError
from training.provenance import CARD_NAMES

log = logging.getLogger("training")


class UsageError(TrainingError):
    """A problem with the user's arguments or files."""


def _setup_logging(run_dir: Path | None) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(run_dir / layout.LOG_FILE))
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", handlers=handlers, force=True
    )


def _discard_run_dir(run_dir: Path) -> None:
    """Remove a run directory this call created and that holds nothing to resume, log file included."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, logging.FileHandler)]:
        root.removeHandler(handler)
        handler.close()
    shutil.rmtree(run_dir, ignore_errors=True)


# ---- train ----

# TrainConfig fields with a command-line flag: (field, argparse type, what it means)
TRAIN_FLAGS: tuple[tuple[str, Callable[[str], Any], str], ...] = (
    ("models", str, f"comma-separated backbones, from {','.join(BACKBONE_NAMES)}"),
    ("image_size", int, "square input size in pixels"),
    ("epochs", int, "most epochs per backbone (early stopping on validation ROC-AUC may stop sooner)"),
    ("batch_size", int, "images per training step"),
    ("weights", str, "imagenet | none (from scratch) | PATH to a local backbone weights file"),
    ("seed", int, "seed of the initialisation and the augmentation, and of the split unless --split-seed is given"),
    ("split_seed", int, "seed of the patient split alone: hold the split fixed while --seed varies"),
    ("budget_minutes", float, "equal wall-clock training budget per backbone"),
)


def _shown(value: Any) -> str:
    if value is None:
        return "none"
    return ",".join(value) if isinstance(value, list) else str(value)


def _config_defaults_epilog() -> str:
    flagged = {name for name, _, _ in TRAIN_FLAGS}
    lines = [
        f"  {name} = {_shown(field.default)}" + (f"  ({field.description})" if field.description else "")
        for name, field in TrainConfig.model_fields.items()
        if name not in flagged
    ]
    return "fields of a --config file without a flag of their own, with their defaults:\n" + "\n".join(lines)


def add_train(sub: argparse._SubParsersAction) -> None:
    train = sub.add_parser(
        "train",
        help="train one or more backbones on a folder-split dataset",
        description="Train backbones into a run directory, then evaluate them (unless --no-evaluate). "
        "Values come from the defaults, then the --config file, then these flags.",
        epilog=_config_defaults_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    train.add_argument("--data", required=True, help="dataset root with train/ (and optional val/, test/); required")
    train.add_argument(
        "--out", required=True, help="run directory; created, and a rerun of the same command resumes it; required"
    )
    for name, kind, meaning in TRAIN_FLAGS:
        default = TrainConfig.model_fields[name].default
        train.add_argument("--" + name.replace("_", "-"), type=kind, help=f"{meaning} (default: {_shown(default)})")
    train.add_argument("--config", help="TOML or JSON file of TrainConfig fields; flags override it (default: none)")
    train.add_argument(
        "--dataset-card",
        help="file describing the dataset (source, licence, patients), recorded in the run and the bundle "
        f"(default: {' / '.join(CARD_NAMES)} in --data, if present)",
    )
    train.add_argument(
        "--no-evaluate", action="store_true", help="skip evaluation and reports after training (default: evaluate)"
    )
    train.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    from training import run as run_module

    run_dir = Path(args.out)
    created = not run_dir.exists()
    try:
        _setup_logging(run_dir)
        config = _train_config(args, run_dir)
        card = Path(args.dataset_card) if args.dataset_card else None
        run_module.train_run(Path(args.data), run_dir, config, dataset_card=card, evaluate=not args.no_evaluate)
    except BaseException:
        if created and not run_module.has_progress(run_dir):  # nothing a rerun could resume: no debris
            _discard_run_dir(run_dir)
        raise
    return 0


def _train_config(args: argparse.Namespace, run_dir: Path) -> TrainConfig:
    overrides = {name: getattr(args, name) for name, _, _ in TRAIN_FLAGS}
    saved = run_dir / layout.CONFIG_FILE
    config = load_config(Path(args.config) if args.config else (saved if saved.is_file() else None), overrides)
    if saved.is_file():
        # Resuming: a resumed run may not silently change its recipe.
        recorded = layout.read_config(run_dir)
        if config != recorded:
            differences = {k: v for k, v in config.model_dump().items() if recorded.model_dump()[k] != v}
            raise UsageError(
                f"{run_dir} holds a run with another configuration (differs in {differences}); use a new --out"
            )
        log.info("resuming the run in %s", run_dir)
    return config


# ---- evaluate ----


def add_evaluate(sub: argparse._SubParsersAction) -> None:
    evaluate = sub.add_parser("evaluate", help="metrics, operating points, plots and comparison for a run")
    evaluate.add_argument("--run", required=True, help="run directory written by train; required")
    evaluate.add_argument("--data", help="dataset root (default: the one the run was trained on)")
    evaluate.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from training.run import evaluate_run

    run_dir = Path(args.run)
    _setup_logging(run_dir)
    evaluate_run(run_dir, Path(args.data) if args.data else None)
    return 0


# ---- export ----


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be greater than 0")
    return value


def _add_parity_tolerance(parser: argparse.ArgumentParser, images: str) -> None:
    """Every verb that writes a model.onnx checks it against the Keras model it came from."""
    parser.add_argument(
        "--parity-tolerance",
        type=_positive_float,
        default=PARITY_TOLERANCE,
        help=f"largest accepted |P_onnx - P_keras| on the {images} (default: {PARITY_TOLERANCE:g})",
    )


def add_export(sub: argparse._SubParsersAction) -> None:
    export = sub.add_parser("export", help="write the model bundle (ONNX + Keras + metadata + card)")
    export.add_argument("--run", required=True, help="evaluated run directory; required")
    export.add_argument("--out", required=True, help="bundle directory to write; required")
    export.add_argument("--model", help="backbone to export (default: best validation ROC-AUC of the run)")
    export.add_argument("--operating-point", help="default operating point (default: the run's configuration)")
    _add_parity_tolerance(export, "validation images")
    export.add_argument(
        "--force", action="store_true", help="export a model near chance on validation (ROC-AUC < 0.6) anyway"
    )
    export.add_argument(
        "--adults",
        help="folder with nih/ and ieee8023/ adult films: also fit the population check and image-quality range",
    )
    export.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    from training import export

    _setup_logging(None)
    bundle = export.export_bundle(
        Path(args.run),
        Path(args.out),
        model_name=args.model,
        operating_point=args.operating_point,
        parity_tolerance=args.parity_tolerance,
        force=args.force,
        adult_dir=Path(args.adults) if args.adults else None,
    )
    print(f"bundle written to {bundle}")
    return 0


# ---- input-check, population-check, image-quality: refits of a bundle's checks ----


def _add_refit_arguments(parser: argparse.ArgumentParser, bundle_help: str) -> None:
    """The arguments every refit verb shares: the bundle, the split and data it was trained on, where to write."""
    parser.add_argument("--bundle", required=True, help=f"{bundle_help}; required")
    parser.add_argument(
        "--split", required=True, help="split.csv the bundle was trained with (e.g. results/<run>/split.csv); required"
    )
    parser.add_argument(
        "--data", required=True, help="dataset root the split's relative paths resolve against; required"
    )
    parser.add_argument(
        "--out", help="bundle directory to write (default: replace --bundle, only once the new one is complete)"
    )


def add_input_check(sub: argparse._SubParsersAction) -> None:
    check = sub.add_parser(
        "input-check",
        help="re-export an existing bundle's model.onnx in the current served form (input-check statistics, "
        "explanation activation) and fit the input check (OOD detector, orientation) on its recorded split",
    )
    _add_refit_arguments(check, "bundle directory to start from")
    check.set_defaults(func=cmd_input_check)


def cmd_input_check(args: argparse.Namespace) -> int:
    from training import bundle_checks

    _setup_logging(None)
    out = Path(args.out or args.bundle)
    bundle = bundle_checks.add_input_check(Path(args.bundle), Path(args.data), Path(args.split), out)
    print(f"bundle with input check written to {bundle}")
    return 0


def add_population_check(sub: argparse._SubParsersAction) -> None:
    check = sub.add_parser(
        "population-check",
        help="declare a bundle's population and fit its population check (training films against adult films of "
        "two collections) and image-quality range; writes a schema-3 bundle",
    )
    _add_refit_arguments(check, "bundle directory to start from (schema 2)")
    check.add_argument(
        "--adults", required=True, help="folder with nih/ and ieee8023/ adult films and their tables; required"
    )
    check.add_argument("--evidence", help="folder for the generalisation and external-test numbers (population.json)")
    check.add_argument(
        "--population",
        help="JSON file with the population record (age_min_years, age_max_years, views, modality, sites, source); "
        "default: known from the bundle's dataset",
    )
    check.set_defaults(func=cmd_population_check)


def cmd_population_check(args: argparse.Namespace) -> int:
    from training import bundle_checks

    _setup_logging(None)
    out = Path(args.out or args.bundle)
    from pneumonia.bundle import Population

    declared = Population.model_validate_json(Path(args.population).read_text()) if args.population else None
    bundle = bundle_checks.add_population_check(
        Path(args.bundle), Path(args.data), Path(args.split), Path(args.adults), out, declared=declared,
        evidence_dir=Path(args.evidence) if args.evidence else None,
    )  # fmt: skip
    print(f"bundle with population check written to {bundle}")
    return 0


def add_image_quality(sub: argparse._SubParsersAction) -> None:
    quality = sub.add_parser(
        "image-quality",
        help="re-choose a schema-3 bundle's image-quality actions, one per rule (contrast, exposure), from its "
        "validation films perturbed for each rule; writes a new bundle (models unchanged)",
    )
    _add_refit_arguments(quality, "schema-3 bundle directory")
    quality.add_argument("--evidence", help="evidence folder whose population.json `quality` entry is updated")
    quality.set_defaults(func=cmd_image_quality, tensorflow=False)


def cmd_image_quality(args: argparse.Namespace) -> int:
    from training import bundle_checks

    _setup_logging(None)
    bundle = bundle_checks.refit_image_quality(
        Path(args.bundle), Path(args.data), Path(args.split), Path(args.out or args.bundle),
        evidence_dir=Path(args.evidence) if args.evidence else None,
    )  # fmt: skip
    print(f"bundle with per-rule image-quality actions written to {bundle}")
    return 0


# ---- adapt ----


def add_adapt(sub: argparse._SubParsersAction) -> None:
    from training.adapt import DEFAULT_MIN_IMAGES

    adapt = sub.add_parser(
        "adapt",
        help="site adaptation: re-estimate BatchNorm statistics on a folder of unlabeled X-rays (AdaBN)",
        description="Writes a new bundle; the source bundle is never modified. Thresholds and calibration stay "
        "those chosen on the source model's validation split.",
    )
    adapt.add_argument("--bundle", required=True, help="source bundle directory; required")
    adapt.add_argument(
        "--images", required=True, help="folder of the site's JPEG/PNG/DICOM X-rays, searched recursively; required"
    )
    adapt.add_argument("--out", required=True, help="bundle directory to write (must differ from --bundle); required")
    adapt.add_argument(
        "--min-images",
        type=int,
        default=DEFAULT_MIN_IMAGES,
        help=f"refuse with fewer usable chest X-rays than this (default: {DEFAULT_MIN_IMAGES})",
    )
    _add_parity_tolerance(adapt, "site's images")
    adapt.set_defaults(func=cmd_adapt)


def cmd_adapt(args: argparse.Namespace) -> int:
    from training.adapt import adapt_bundle

    _setup_logging(None)
    bundle = adapt_bundle(Path(args.bundle), Path(args.images), Path(args.out), min_images=args.min_images,
                          parity_tolerance=args.parity_tolerance)  # fmt: skip
    print(f"adapted bundle written to {bundle}")
    return 0


# ---- site-report and calibrate ----


def _add_site_images(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--images",
        required=True,
        help="folder with NORMAL/ and PNEUMONIA/ (searched recursively), or the root --labels paths are relative to; "
        "required",
    )
    parser.add_argument(
        "--labels", help="CSV with the columns path,label (NORMAL/PNEUMONIA or 0/1) instead of class folders"
    )


def add_site_report(sub: argparse._SubParsersAction) -> None:
    from training.site_options import BOOTSTRAP, GALLERY

    report = sub.add_parser(
        "site-report",
        help="how a bundle does on a site's labelled X-rays: metrics with intervals, plots, error gallery, verdict",
        description="Read-only: scores the images through the served path (input check under refuse) and writes "
        "report.html (opens offline), report.md and report.json to --out.",
    )
    report.add_argument("--bundle", required=True, help="bundle directory; required")
    _add_site_images(report)
    report.add_argument("--out", required=True, help="report folder to write; required")
    report.add_argument(
        "--gallery", type=int, default=GALLERY, help=f"false positives and negatives shown, each (default: {GALLERY})"
    )
    report.add_argument(
        "--bootstrap", type=int, default=BOOTSTRAP, help=f"bootstrap samples of the ROC-AUC (default: {BOOTSTRAP})"
    )
    report.set_defaults(func=cmd_site_report)


def cmd_site_report(args: argparse.Namespace) -> int:
    from training.site_report import site_report

    _setup_logging(None)
    report = site_report(Path(args.bundle), Path(args.images), Path(args.out), labels=_optional_path(args.labels),
                         gallery=args.gallery, bootstrap=args.bootstrap)  # fmt: skip
    print(report.data["verdict"])
    print(f"site report written to {Path(args.out) / 'report.html'}")
    return 0


def _optional_path(value: str | None) -> Path | None:
    return Path(value) if value else None


def add_calibrate(sub: argparse._SubParsersAction) -> None:
    from training.site_options import (
        CALIBRATIONS,
        DEFAULT_CALIBRATION,
        DEFAULT_METHOD,
        DEFAULT_MIN_PER_CLASS,
        GALLERY,
        METHODS,
        describe,
    )

    calibrate = sub.add_parser(
        "calibrate",
        help="re-fit the calibration and re-choose every operating point on a site's labelled X-rays",
        description="Writes a new bundle (the source is never modified) whose operating points keep their names "
        "and rules, with thresholds from the site's sample, and the site report before and after next to it.",
        epilog="methods:\n" + "\n".join(f"  {m}: {describe(m)}" for m in METHODS),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    calibrate.add_argument("--bundle", required=True, help="source bundle directory; required")
    _add_site_images(calibrate)
    calibrate.add_argument("--out", required=True, help="bundle directory to write (must differ from --bundle)")
    calibrate.add_argument(
        "--min-per-class",
        type=int,
        default=DEFAULT_MIN_PER_CLASS,
        help=f"refuse with fewer usable images of either class (default: {DEFAULT_MIN_PER_CLASS})",
    )
    calibrate.add_argument(
        "--method", choices=METHODS, default=DEFAULT_METHOD, help=f"threshold method (default: {DEFAULT_METHOD})"
    )
    calibrate.add_argument(
        "--calibration",
        choices=CALIBRATIONS,
        default=DEFAULT_CALIBRATION,
        help=f"Platt fit: the bias alone, or scale and bias (default: {DEFAULT_CALIBRATION})",
    )
    calibrate.add_argument("--report", help="site report folder (default: OUT-site-report next to --out)")
    calibrate.add_argument(
        "--gallery", type=int, default=GALLERY, help=f"false positives and negatives shown, each (default: {GALLERY})"
    )
    _add_parity_tolerance(calibrate, "site's images")
    calibrate.set_defaults(func=cmd_calibrate)


def cmd_calibrate(args: argparse.Namespace) -> int:
    from training.calibrate import calibrate_bundle

    _setup_logging(None)
    result = calibrate_bundle(
        Path(args.bundle), Path(args.images), Path(args.out), labels=_optional_path(args.labels),
        min_per_class=args.min_per_class, method=args.method, calibration=args.calibration,
        report_dir=_optional_path(args.report), gallery=args.gallery, parity_tolerance=args.parity_tolerance,
    )  # fmt: skip
    print(f"calibrated bundle written to {result.bundle}; site reports in {result.report}")
    for name in result.fit.points:
        b, a = result.record.before[name], result.record.after[name]
        print(
            f"  {name}: sensitivity {b['sensitivity'].value:.3f} -> {a['sensitivity'].value:.3f}, "
            f"specificity {b['specificity'].value:.3f} -> {a['specificity'].value:.3f} (on the sample)"
        )
    return 0


# ---- publish ----


def add_publish(sub: argparse._SubParsersAction) -> None:
    publish = sub.add_parser(
        "publish", help="copy a run's evidence (config, split, logs, metrics, plots) for committing"
    )
    publish.add_argument("--run", required=True, help="run directory; required")
    publish.add_argument("--out", required=True, help="e.g. results/NAME; required")
    publish.set_defaults(func=cmd_publish, tensorflow=False)


def cmd_publish(args: argparse.Namespace) -> int:
    from training.run import publish_run

    copied = publish_run(Path(args.run), Path(args.out))
    print(f"{len(copied)} files copied to {args.out}")
    return 0


# One registrar per subcommand: a new command is one more function here.
COMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (
    add_train,
    add_evaluate,
    add_export,
    add_input_check,
    add_population_check,
    add_image_quality,
    add_adapt,
    add_site_report,
    add_calibrate,
    add_publish,
)


# What the training extras bring (pyproject.toml's [training]); a verb that needs one says how to install it.
EXTRAS_INSTALL = "pip install -c constraints.txt -e '.[training]'"
TRAINING_EXTRAS = frozenset({"scipy", "sklearn", "matplotlib", "tf2onnx", "tqdm"})


def missing_extra_message(exc: ModuleNotFoundError) -> str | None:
    """The one line for a verb that needs a training extra which is not installed; None for any other import error."""
    module = (exc.name or "").partition(".")[0]
    if module not in TRAINING_EXTRAS:
        return None
    return f"{module} is not installed: this command needs the training extras; install them with `{EXTRAS_INSTALL}`"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    parser.set_defaults(tensorflow=True)  # the verb imports TensorFlow (a verb that does not says so)
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = build_parser().parse_args(argv)
    if args.tensorflow:
        import_tensorflow_quietly()  # before any verb's own import: its start-up lines kept off the output
    started = time.monotonic()
    try:
        code = args.func(args)
    except TrainingError as exc:  # the user's to fix: one line, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:  # the verbs import their heavy modules only when they run
        message = missing_extra_message(exc)
        if message is None:
            raise
        print(f"error: {args.command}: {message}", file=sys.stderr)
        return 2
    log.info("%s finished in %.1f s", args.command, time.monotonic() - started)
    return int(code)


if __name__ == "__main__":
    sys.exit(main())
