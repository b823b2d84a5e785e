"""Dataset scanning, the patient-level validation split, decoding through `pneumonia.imaging`, and tf.data input.

Layout expected (class folders case-insensitive):
    DATA/train/{NORMAL,PNEUMONIA}/*   required
    DATA/val/{NORMAL,PNEUMONIA}/*     optional; used only when it is large enough
    DATA/test/{NORMAL,PNEUMONIA}/*    optional; evaluated and reported, never used for any choice
"""

from __future__ import annotations

import csv
import hashlib
import logging
import random
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pneumonia.bundle import CLASS_NAMES
from pneumonia.imaging import IMAGE_SUFFIXES, ImageInputError, load_model_input
from training.config import TrainConfig
from training.errors import TrainingError

log = logging.getLogger(__name__)

MIN_VAL_IMAGES = 100  # Kaggle's own val/ has 16 images: too few to choose a threshold on

_PATIENT_PATTERNS = (
    re.compile(r"^(person\d+)_", re.IGNORECASE),  # person1000_bacteria_2931.jpeg
    re.compile(r"^(NORMAL2-IM-\d+)-", re.IGNORECASE),  # NORMAL2-IM-1427-0001.jpeg
    re.compile(r"^(IM-\d+)-", re.IGNORECASE),  # IM-0115-0001.jpeg
)


class DatasetError(TrainingError):
    """The dataset cannot be used as given; the message says what to fix."""


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int  # index into CLASS_NAMES: 0 NORMAL, 1 PNEUMONIA
    patient: str


def patient_id(filename: str) -> str:
    """The patient a Kermany file belongs to; unknown names count as their own patient."""
    for pattern in _PATIENT_PATTERNS:
        match = pattern.match(filename)
        if match:
            return match.group(1).upper()
    return "FILE:" + Path(filename).stem


def _class_dirs(split_dir: Path) -> dict[str, Path]:
    found = {child.name.upper(): child for child in split_dir.iterdir() if child.is_dir()}
    missing = [name for name in CLASS_NAMES if name not in found]
    if missing:
        raise DatasetError(
            f"{split_dir}: class folder(s) {', '.join(missing)} missing; expected {' and '.join(CLASS_NAMES)}"
        )
    return {name: found[name] for name in CLASS_NAMES}


def scan_split(split_dir: Path) -> list[Sample]:
    samples = []
    for label, (name, folder) in enumerate(_class_dirs(split_dir).items()):
        files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DatasetError(f"{folder}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in class folder {name}")
        samples += [Sample(path=p, label=label, patient=patient_id(p.name)) for p in files]
    return samples


def find_split_dir(data_dir: Path, name: str) -> Path | None:
    if not data_dir.is_dir():
        raise DatasetError(f"{data_dir}: dataset directory does not exist")
    for child in data_dir.iterdir():
        if child.is_dir() and child.name.lower() == name:
            return child
    return None


def _content_groups(samples: list[Sample]) -> list[str]:
    """Union patients that share byte-identical files, so a duplicate cannot straddle the split."""
    parent: dict[str, str] = {}

    def find(key: str) -> str:
        while parent.setdefault(key, key) != key:
            key = parent[key]
        return key

    first_owner: dict[str, str] = {}
    for sample in samples:
        digest = hashlib.sha1(sample.path.read_bytes()).hexdigest()
        owner = first_owner.setdefault(digest, sample.patient)
        parent[find(sample.patient)] = find(owner)
    return [find(s.patient) for s in samples]


def patient_split(samples: list[Sample], val_fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Stratified split by patient group: no patient (or duplicate image) appears on both sides.

    Groups are stratified by their majority label, shuffled with `seed`, and the first `val_fraction` of
    each class's groups go to validation.
    """
    if not 0.0 < val_fraction < 1.0:
        raise DatasetError(f"val fraction must be between 0 and 1, got {val_fraction}")
    groups: dict[str, list[Sample]] = {}
    for sample, group in zip(samples, _content_groups(samples), strict=True):
        groups.setdefault(group, []).append(sample)
    rng = random.Random(seed)
    val_groups: set[str] = set()
    for label in range(len(CLASS_NAMES)):
        keys = sorted(k for k, members in groups.items() if round(np.mean([m.label for m in members])) == label)
        rng.shuffle(keys)
        target = sum(len(groups[k]) for k in keys) * val_fraction
        taken = 0
        for key in keys:
            if taken >= target:
                break
            val_groups.add(key)
            taken += len(groups[key])
    train = [s for k, members in groups.items() if k not in val_groups for s in members]
    val = [s for k, members in groups.items() if k in val_groups for s in members]
    if not train or not val or len({s.label for s in val}) < 2:
        raise DatasetError("too few patients to carve a validation split with both classes")
    return sorted(train, key=lambda s: s.path), sorted(val, key=lambda s: s.path)


@dataclass(frozen=True)
class DatasetSplits:
    train: list[Sample]
    val: list[Sample]
    test: list[Sample]
    split_method: str


def load_splits(data_dir: Path, *, val_fraction: float, seed: int) -> DatasetSplits:
    data_dir = Path(data_dir)
    train_dir = find_split_dir(data_dir, "train")
    if train_dir is None:
        raise DatasetError(f"{data_dir}: no train/ folder (expected train/NORMAL and train/PNEUMONIA)")
    train = scan_split(train_dir)
    val_dir = find_split_dir(data_dir, "val")
    given_val = scan_split(val_dir) if val_dir is not None else []
    if len(given_val) >= MIN_VAL_IMAGES:
        val, method = given_val, "given val/ folder"
    else:
        train, val = patient_split(train + given_val, val_fraction, seed)
        method = f"stratified by patient from train/, {val_fraction:.0%} of images, seed {seed}"
    test_dir = find_split_dir(data_dir, "test")
    test = scan_split(test_dir) if test_dir is not None else []
    return DatasetSplits(train=train, val=val, test=test, split_method=method)


def write_split(path: Path, splits: DatasetSplits, data_dir: Path) -> None:
    """Paths relative to the dataset root: a recorded split stays valid where the dataset lives elsewhere."""
    root = Path(data_dir).resolve()
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["subset", "label", "patient", "path"])
        for subset, samples in (("train", splits.train), ("val", splits.val), ("test", splits.test)):
            for s in samples:
                absolute = s.path.resolve()
                recorded = absolute.relative_to(root) if absolute.is_relative_to(root) else absolute
                writer.writerow([subset, CLASS_NAMES[s.label], s.patient, recorded.as_posix()])


def read_split(path: Path, data_dir: Path) -> dict[str, list[Sample]]:
    """The recorded split, relative paths resolved against `data_dir` (absolute ones are kept)."""
    subsets: dict[str, list[Sample]] = {"train": [], "val": [], "test": []}
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            subsets[row["subset"]].append(
                Sample(path=Path(data_dir) / row["path"], label=CLASS_NAMES.index(row["label"]), patient=row["patient"])
            )
    return subsets


@dataclass(frozen=True)
class DecodedSet:
    images: np.ndarray  # (N, H, W, 3) uint8, model input before the model's own scaling
    labels: np.ndarray  # (N,) int
    paths: list[Path]
    skipped: list[tuple[Path, str]]


def decode_samples(samples: list[Sample], size: tuple[int, int], *, workers: int = 4, desc: str = "") -> DecodedSet:
    """Decode every file with the service's own decoder; unreadable files are skipped and counted."""
    from tqdm import tqdm

    def decode(sample: Sample) -> np.ndarray | str:
        try:
            return load_model_input(sample.path, size).astype(np.uint8)
        except (ImageInputError, OSError) as exc:
            return str(exc)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(tqdm(pool.map(decode, samples), total=len(samples), desc=desc or "decode", unit="img"))
    keep = [i for i, r in enumerate(results) if isinstance(r, np.ndarray)]
    skipped = [(samples[i].path, str(r)) for i, r in enumerate(results) if not isinstance(r, np.ndarray)]
    for path, reason in skipped:
        log.warning("skipped unreadable image %s: %s", path, reason)
    if not keep:
        raise DatasetError(f"none of the {len(samples)} images could be decoded")
    images = np.stack([results[i] for i in keep]) if keep else np.zeros((0, *size, 3), np.uint8)
    labels = np.array([samples[i].label for i in keep], dtype=np.int64)
    return DecodedSet(images=images, labels=labels, paths=[samples[i].path for i in keep], skipped=skipped)


def class_weights(labels: np.ndarray) -> dict[int, float]:
    """Inverse-frequency weights so each class contributes equally to the loss (1:3 imbalance here)."""
    counts = np.bincount(labels, minlength=len(CLASS_NAMES)).astype(float)
    if (counts == 0).any():
        raise DatasetError(f"training data lacks a class: counts {counts.tolist()}")
    return {i: float(len(labels) / (len(CLASS_NAMES) * c)) for i, c in enumerate(counts)}


def decode_subset(samples: list[Sample], config: TrainConfig, name: str) -> DecodedSet:
    """A subset of the split decoded at the run's image size; skipped files are logged with their count."""
    decoded = decode_samples(samples, (config.image_size, config.image_size), workers=config.decode_workers, desc=name)
    if decoded.skipped:
        log.warning("%s: skipped %d unreadable image(s) of %d", name, len(decoded.skipped), len(samples))
    return decoded
