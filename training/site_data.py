"""A site's labelled X-rays (`site-report`, `calibrate`): found in NORMAL/ and PNEUMONIA/ folders or listed in a
path,label CSV, and scored through `pneumonia.Model` exactly as the service scores an upload: the same decode,
the input check under the `refuse` policy and the ONNX model. Refused and unreadable files are kept aside with
their reasons, never scored into the statistics."""

from __future__ import annotations

import csv
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pneumonia.bundle import CLASS_NAMES
from pneumonia.imaging import find_images, to_model_input
from pneumonia.model import ImageRefusedError, Model
from training.errors import TrainingError
from training.metrics import logits_from_probabilities
from training.stress import PERTURBATIONS, perturb

log = logging.getLogger(__name__)

LABEL_ALIASES = {"NORMAL": 0, "PNEUMONIA": 1, "0": 0, "1": 1}


class SiteDataError(TrainingError):
    """The site's images or labels cannot be used as given; the message says what to fix."""


@dataclass(frozen=True)
class LabelledFile:
    path: Path
    name: str  # as the user gave it: relative to the images folder
    label: int  # 0 NORMAL, 1 PNEUMONIA


@dataclass(frozen=True)
class Refusal:
    name: str
    label: int
    code: str
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class ScoredSite:
    """The usable images of a site, as scored, and the ones left out."""

    names: list[str]
    paths: list[Path]
    labels: np.ndarray  # (N,) int
    probabilities: np.ndarray  # (N,) the served P(pneumonia), float64 from the ONNX float32
    hashes: list[str]  # SHA-256 of each used file
    gray: np.ndarray  # (N, H, W) uint8: each model input as scored (upright)
    refused: list[Refusal]

    @property
    def logits(self) -> np.ndarray:
        """log(p / (1 - p)) in float64, p clipped to [1e-7, 1 - 1e-7]."""
        return logits_from_probabilities(self.probabilities)

    def count(self, label: int) -> int:
        return int((self.labels == label).sum())

    def model_inputs(self, index: slice | np.ndarray = slice(None)) -> np.ndarray:
        """(n, H, W, 3) float32 0..255, as the model receives them."""
        return np.repeat(self.gray[index][..., None], 3, axis=3).astype(np.float32)


def _class_folders(root: Path) -> dict[int, Path]:
    found = {child.name.upper(): child for child in root.iterdir() if child.is_dir()}
    missing = [name for name in CLASS_NAMES if name not in found]
    if missing:
        raise SiteDataError(
            f"{root}: class folder(s) {', '.join(f'{m}/' for m in missing)} missing; put the labelled images in "
            f"{' and '.join(f'{n}/' for n in CLASS_NAMES)}, or list them with --labels CSV (path,label)"
        )
    return {index: found[name] for index, name in enumerate(CLASS_NAMES)}


def labelled_files(images: Path, labels: Path | None = None) -> list[LabelledFile]:
    """Every labelled image: in images/NORMAL and images/PNEUMONIA (searched recursively), or the rows of a
    `path,label` CSV whose paths are relative to `images` (label NORMAL/PNEUMONIA, or 0/1)."""
    images = Path(images)
    if not images.is_dir():
        raise SiteDataError(f"{images}: not a folder")
    if labels is None:
        return [
            LabelledFile(folder / relative, (Path(folder.name) / relative).as_posix(), label)
            for label, folder in _class_folders(images).items()
            for relative in find_images(folder)
        ]
    return _read_labels_csv(images, Path(labels))


def _read_labels_csv(images: Path, labels: Path) -> list[LabelledFile]:
    if not labels.is_file():
        raise SiteDataError(f"{labels}: labels file not found")
    with labels.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = {name.strip().lower(): name for name in reader.fieldnames or []}
        if "path" not in columns or "label" not in columns:
            raise SiteDataError(
                f"{labels}: needs a header with the columns path and label (found {reader.fieldnames or 'nothing'})"
            )
        files, seen = [], set()
        for line, row in enumerate(reader, start=2):
            name = (row[columns["path"]] or "").strip()
            label = (row[columns["label"]] or "").strip().upper()
            if not name:
                raise SiteDataError(f"{labels}:{line}: empty path")
            if label not in LABEL_ALIASES:
                raise SiteDataError(
                    f"{labels}:{line}: label {row[columns['label']]!r} is not one of NORMAL, PNEUMONIA, 0, 1"
                )
            path = Path(name) if Path(name).is_absolute() else images / name
            if not path.is_file():
                raise SiteDataError(f"{labels}:{line}: {path} does not exist")
            if path.resolve() in seen:
                raise SiteDataError(f"{labels}:{line}: {name} is listed twice")
            seen.add(path.resolve())
            files.append(LabelledFile(path, name, LABEL_ALIASES[label]))
    if not files:
        raise SiteDataError(f"{labels}: no rows")
    return files


def score_site(model: Model, files: list[LabelledFile], *, batch_size: int = 16) -> ScoredSite:
    """Score every file through `model.predict_many` under the `refuse` policy (the service's default)."""
    names, paths, labels, probabilities, hashes, gray, refused = [], [], [], [], [], [], []
    items = model.predict_many([f.path for f in files], batch_size=batch_size, policy="refuse")
    for file, item in zip(files, items, strict=True):
        if item.prediction is None:
            error = item.error
            reasons = tuple(error.check.reasons) if isinstance(error, ImageRefusedError) else (str(error),)
            code = error.code.value if error is not None else "error"
            refused.append(Refusal(file.name, file.label, code, reasons))
            log.warning("left out %s: %s (%s)", file.name, code, "; ".join(reasons))
            continue
        names.append(file.name)
        paths.append(file.path)
        labels.append(file.label)
        probabilities.append(item.prediction.probability)
        hashes.append(hashlib.sha256(file.path.read_bytes()).hexdigest())
        gray.append(to_model_input(item.prediction.image, model.metadata.input_size)[:, :, 0].astype(np.uint8))
    height, width = model.metadata.input_size
    return ScoredSite(
        names=names,
        paths=paths,
        labels=np.array(labels, dtype=int),
        probabilities=np.array(probabilities, dtype=np.float64),
        hashes=hashes,
        gray=np.stack(gray) if gray else np.zeros((0, height, width), np.uint8),
        refused=refused,
    )


def perturbed_logits(model: Model, site: ScoredSite, *, batch_size: int = 32) -> dict[str, np.ndarray]:
    """The site's images under each stress perturbation of training/stress.py, scored by the served ONNX model
    (what `stress_youden` pools on validation), as logits."""
    out = {}
    for name, perturbation in PERTURBATIONS.items():
        batch = perturb(site.model_inputs(), perturbation)
        scores = [model.classifier.predict(batch[i : i + batch_size]) for i in range(0, len(batch), batch_size)]
        out[name] = logits_from_probabilities(np.concatenate(scores) if scores else np.zeros(0))
    return out
