"""A training run directory: what `train` writes and what `evaluate` and `export` read.

RUN_DIR/
    config.json   resolved TrainConfig          split.csv    every image, its patient and subset
    data.json     dataset root, split method, counts, skipped files
    training.log
    models/<backbone>/  best.keras, history.csv, done.json, evaluation.json, predictions.npz, plots
    comparison.{md,csv,json}   all backbones side by side; the best is chosen by validation ROC-AUC
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from app.bundle import CLASS_NAMES
from training.config import TrainConfig, load_config
from training.data import DatasetSplits, DecodedSet, decode_samples, load_splits, read_split, write_split

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
SPLIT_FILE = "split.csv"
DATA_FILE = "data.json"
MODELS_DIR = "models"


def read_config(run_dir: Path) -> TrainConfig:
    return load_config(run_dir / CONFIG_FILE, {})


def read_data_summary(run_dir: Path) -> dict:
    return json.loads((run_dir / DATA_FILE).read_text())


def model_dirs(run_dir: Path) -> dict[str, Path]:
    root = run_dir / MODELS_DIR
    return {d.name: d for d in sorted(root.iterdir()) if d.is_dir()} if root.is_dir() else {}


def _counts(samples) -> dict[str, int]:
    return {name: sum(1 for s in samples if s.label == i) for i, name in enumerate(CLASS_NAMES)}


def prepare_split(data_dir: Path, run_dir: Path, config: TrainConfig) -> dict[str, list]:
    """Create (or, when resuming, re-read) the run's recorded split."""
    split_path = run_dir / SPLIT_FILE
    if split_path.is_file():
        return read_split(split_path, data_dir)
    splits: DatasetSplits = load_splits(data_dir, val_fraction=config.val_fraction, seed=config.seed)
    write_split(split_path, splits, data_dir)
    patients = {name: len({s.patient for s in getattr(splits, name)}) for name in ("train", "val", "test")}
    summary = {
        "data_dir": str(Path(data_dir).resolve()),
        "split_method": splits.split_method,
        "split_seed": config.seed,
        "counts": {name: _counts(getattr(splits, name)) for name in ("train", "val", "test")},
        "patients": patients,
    }
    (run_dir / DATA_FILE).write_text(json.dumps(summary, indent=2))
    log.info("split: %s; images %s; patients %s", splits.split_method, summary["counts"], patients)
    return {"train": splits.train, "val": splits.val, "test": splits.test}


def read_run_split(run_dir: Path, data_dir: Path | None = None) -> dict[str, list]:
    """The run's recorded split, on the dataset at `data_dir` (default: where the run was trained)."""
    return read_split(run_dir / SPLIT_FILE, Path(data_dir or read_data_summary(run_dir)["data_dir"]))


def decode_subset(samples: list, config: TrainConfig, name: str) -> DecodedSet:
    decoded = decode_samples(samples, (config.image_size, config.image_size), workers=config.decode_workers, desc=name)
    if decoded.skipped:
        log.warning("%s: skipped %d unreadable image(s) of %d", name, len(decoded.skipped), len(samples))
    return decoded


def train_run(data_dir: Path, run_dir: Path, config: TrainConfig, *, evaluate: bool = True) -> None:
    from training.backbones import resolve
    from training.fit import fit_backbone

    backbones = resolve(config.models)  # fail on a typo before any decoding
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / CONFIG_FILE).write_text(config.model_dump_json(indent=2))
    subsets = prepare_split(Path(data_dir), run_dir, config)
    train = decode_subset(subsets["train"], config, "train")
    val = decode_subset(subsets["val"], config, "val")
    _record_skipped(run_dir, {"train": train, "val": val})
    for backbone in backbones:
        log.info("training %s at %d px", backbone.name, config.image_size)
        summary = fit_backbone(backbone, train, val, run_dir / MODELS_DIR / backbone.name, config)
        log.info("%s: %s", backbone.name, summary)
    if evaluate:
        evaluate_run(run_dir, None)


def _record_skipped(run_dir: Path, decoded: dict[str, DecodedSet]) -> None:
    summary = read_data_summary(run_dir)
    summary["skipped_unreadable"] = {name: [[str(p), why] for p, why in d.skipped] for name, d in decoded.items()}
    (run_dir / DATA_FILE).write_text(json.dumps(summary, indent=2))


PUBLISHED_FILES = ("config.json", "data.json", "split.csv", "training.log", "comparison.md", "comparison.csv", "comparison.json")
PUBLISHED_MODEL_FILES = ("history.csv", "done.json", "evaluation.json", "*.png")


def publish_run(run_dir: Path, out_dir: Path) -> list[Path]:
    """Copy the small, reviewable evidence of a run (no checkpoints, no predictions) into `out_dir`."""
    import shutil

    copied = []
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in PUBLISHED_FILES:
        if (run_dir / name).is_file():
            copied.append(Path(shutil.copy2(run_dir / name, out_dir / name)))
    copied += [Path(shutil.copy2(p, out_dir / p.name)) for p in sorted(run_dir.glob("gradcam_grid_*.png"))]
    for name, model_dir in model_dirs(run_dir).items():
        target = out_dir / MODELS_DIR / name
        target.mkdir(parents=True, exist_ok=True)
        for pattern in PUBLISHED_MODEL_FILES:
            copied += [Path(shutil.copy2(p, target / p.name)) for p in sorted(model_dir.glob(pattern))]
    return copied


def evaluate_run(run_dir: Path, data_dir: Path | None) -> None:
    from training.evaluate import evaluate_models

    evaluate_models(run_dir, data_dir)
