"""`train` and `publish` over a run directory (its layout: `training.layout`)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from pneumonia.bundle import CLASS_NAMES
from training import layout, provenance
from training.config import TrainConfig
from training.data import DatasetSplits, DecodedSet, Sample, decode_subset, load_splits, write_split

log = logging.getLogger(__name__)


def _counts(samples: list[Sample]) -> dict[str, int]:
    return {name: sum(1 for s in samples if s.label == i) for i, name in enumerate(CLASS_NAMES)}


def new_split(data_dir: Path, config: TrainConfig) -> DatasetSplits:
    """Scan the dataset and carve the split; raises before anything is written when the data cannot be used."""
    return load_splits(data_dir, val_fraction=config.val_fraction, seed=config.patient_split_seed)


def record_split(data_dir: Path, run_dir: Path, config: TrainConfig, splits: DatasetSplits, card: Path | None) -> None:
    """split.csv and data.json: the split, its counts, and where the data came from (card, content hash)."""
    write_split(run_dir / layout.SPLIT_FILE, splits, data_dir)
    subsets = {"train": splits.train, "val": splits.val, "test": splits.test}
    patients = {name: len({s.patient for s in samples}) for name, samples in subsets.items()}
    summary = {
        "data_dir": str(Path(data_dir).resolve()),
        "provenance": provenance.record(Path(data_dir), card),
        "split_method": splits.split_method,
        "split_seed": config.patient_split_seed,
        "counts": {name: _counts(samples) for name, samples in subsets.items()},
        "patients": patients,
    }
    layout.write_data_summary(run_dir, summary)
    log.info("split: %s; images %s; patients %s", splits.split_method, summary["counts"], patients)


def train_run(
    data_dir: Path, run_dir: Path, config: TrainConfig, *, dataset_card: Path | None = None, evaluate: bool = True
) -> None:
    """Train every backbone of `config` into `run_dir`; a rerun resumes from the recorded split and checkpoints."""
    from training.backbones import resolve
    from training.fit import fit_backbone

    backbones = resolve(config.models)
    resuming = (run_dir / layout.SPLIT_FILE).is_file()
    splits = None if resuming else new_split(Path(data_dir), config)  # fails on bad data before the run exists
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / layout.CONFIG_FILE).write_text(config.model_dump_json(indent=2))
    if splits is not None:
        record_split(Path(data_dir), run_dir, config, splits, dataset_card)
    subsets = layout.read_run_split(run_dir, Path(data_dir))
    train = decode_subset(subsets["train"], config, "train")
    val = decode_subset(subsets["val"], config, "val")
    _record_skipped(run_dir, {"train": train, "val": val})
    for backbone in backbones:
        log.info("training %s at %d px", backbone.name, config.image_size)
        summary = fit_backbone(backbone, train, val, layout.model_dir(run_dir, backbone.name), config)
        log.info("%s: %s", backbone.name, summary)
    if evaluate:
        evaluate_run(run_dir, None)


def _record_skipped(run_dir: Path, decoded: dict[str, DecodedSet]) -> None:
    summary = layout.read_data_summary(run_dir)
    summary["skipped_unreadable"] = {name: [[str(p), why] for p, why in d.skipped] for name, d in decoded.items()}
    layout.write_data_summary(run_dir, summary)


def has_progress(run_dir: Path) -> bool:
    """Whether any backbone has written anything (a checkpoint, a backup, history) that a rerun would resume."""
    return any(any(d.iterdir()) for d in layout.model_dirs(run_dir).values())


def publish_run(run_dir: Path, out_dir: Path) -> list[Path]:
    """Copy the small, reviewable evidence of a run (no checkpoints, no predictions) into `out_dir`."""
    copied = []
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in layout.PUBLISHED_FILES:
        if (run_dir / name).is_file():
            copied.append(Path(shutil.copy2(run_dir / name, out_dir / name)))
    copied += [Path(shutil.copy2(p, out_dir / p.name)) for p in sorted(run_dir.glob(layout.gradcam_grid_file("*")))]
    for name, model_dir in layout.model_dirs(run_dir).items():
        target = out_dir / layout.MODELS_DIR / name
        target.mkdir(parents=True, exist_ok=True)
        for pattern in layout.PUBLISHED_MODEL_FILES:
            copied += [Path(shutil.copy2(p, target / p.name)) for p in sorted(model_dir.glob(pattern))]
    return copied


def evaluate_run(run_dir: Path, data_dir: Path | None) -> None:
    from training.evaluate import evaluate_models  # TensorFlow, matplotlib, scikit-learn: only when evaluating

    evaluate_models(run_dir, data_dir)
