"""Whose X-ray is it? The population check: DICOM tags where present, a learned check everywhere.

A chest film can be a perfectly good X-ray and still lie outside what the model knows: the shipped model
learned from children aged 1-5 at one hospital, and on adult films its answers are meaningless (ROC-AUC 0.43
on NIH films: results/population). Two sources of evidence, in this order:

1. DICOM tags, when present (`pneumonia.imaging.DicomTags`): a lateral view, a body part other than the
   chest, or a modality other than a projection radiograph is not a frontal chest X-ray at all
   (`not_a_chest_xray`); an age outside the bundle's `population` is `outside_population`, naming the age.
   A missing tag is never a reason: the verdict says "age unknown" instead.
2. A learned check for every image (JPEG and PNG carry no age): logistic regression on the same channel
   statistics the out-of-distribution detector reads, from the same ONNX run as the probability, fitted on
   the training films against adult films of two collections (training/population.py). Its threshold keeps
   >= 99% of the validation films; how it generalises to an unseen collection is in the bundle's metadata.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pneumonia.bundle import BundleError, Population, PopulationCheckSpec, verify_file
from pneumonia.errors import ErrorCode
from pneumonia.imaging import DicomTags

# Projection radiographs: computed and digital radiography, and the codes some vendors use for them.
RADIOGRAPH_MODALITIES = frozenset({"CR", "DX", "DR", "PX"})
LATERAL_VIEWS = frozenset({"LL", "RL", "LAT", "LATERAL", "LLD", "RLD"})
CHEST_BODY_PARTS = ("CHEST", "THORAX", "THORAC", "TORAX", "LUNG")  # substrings: "CHEST PA", "THORAX AP", ...
# Ages above this are reported as "over 89": HIPAA counts an exact age of 90 or more as an identifier.
MAX_REPORTED_AGE = 89


@dataclass(frozen=True)
class Finding:
    code: ErrorCode
    reason: str


def describe_age(years: float) -> str:
    if years > MAX_REPORTED_AGE:
        return f"over {MAX_REPORTED_AGE} years"
    if years < 1:
        return f"{years * 12:.0f} months"
    return f"{int(years)} years"


def population_words(population: Population) -> str:
    """'children aged 1-5 at one hospital' from the bundle's record."""
    who = "children" if population.age_max_years < 18 else "patients"
    sites = "one hospital" if population.sites == 1 else f"{population.sites} hospitals"
    return f"{who} aged {population.age_min_years:g}-{population.age_max_years:g} at {sites}"


def tag_findings(tags: DicomTags, population: Population | None) -> list[Finding]:
    """What the DICOM tags say against scoring this film. Absent tags say nothing."""
    findings = []
    if tags.modality is not None and tags.modality not in RADIOGRAPH_MODALITIES:
        findings.append(Finding(ErrorCode.NOT_A_CHEST_XRAY, f"DICOM Modality is {tags.modality}, not a projection "
                                f"radiograph ({'/'.join(sorted(RADIOGRAPH_MODALITIES))})"))  # fmt: skip
    if tags.view_position is not None and tags.view_position in LATERAL_VIEWS:
        findings.append(Finding(ErrorCode.NOT_A_CHEST_XRAY, f"DICOM ViewPosition is {tags.view_position}: a "
                                "lateral film; the model reads frontal (AP/PA) chest films only"))  # fmt: skip
    if tags.body_part is not None and not any(part in tags.body_part for part in CHEST_BODY_PARTS):
        findings.append(
            Finding(ErrorCode.NOT_A_CHEST_XRAY, f"DICOM BodyPartExamined is {tags.body_part}, not the chest")
        )
    if tags.age_years is not None and population is not None and not population.covers_age(tags.age_years):
        findings.append(Finding(ErrorCode.OUTSIDE_POPULATION, f"the patient's age from DICOM {tags.age_source} is "
                                f"{describe_age(tags.age_years)}; the model was trained on {population_words(population)}"))  # fmt: skip
    return findings


@dataclass(frozen=True)
class PopulationDetector:
    """P(outside the training population) = sigmoid(((x - center) / scale) . coef + intercept), where x is the
    concatenated [mean, std] channel features of every input-check depth."""

    center: np.ndarray  # (D,)
    scale: np.ndarray  # (D,)
    coef: np.ndarray  # (D,)
    intercept: float
    threshold: float

    def probability(self, features: np.ndarray) -> np.ndarray:
        """(N, D) features -> (N,) P(outside the population)."""
        logits = ((features - self.center) / self.scale) @ self.coef + self.intercept
        return 1.0 / (1.0 + np.exp(-np.clip(logits, -60.0, 60.0)))

    def save(self, path: Path) -> None:
        with Path(path).open("wb") as handle:
            np.savez_compressed(handle, center=self.center, scale=self.scale, coef=self.coef,
                                intercept=np.array(self.intercept), threshold=np.array(self.threshold))  # fmt: skip

    @classmethod
    def load(cls, path: Path) -> PopulationDetector:
        with np.load(path, allow_pickle=False) as data:
            return cls(
                center=data["center"].astype(np.float64),
                scale=data["scale"].astype(np.float64),
                coef=data["coef"].astype(np.float64),
                intercept=float(data["intercept"]),
                threshold=float(data["threshold"]),
            )


def load_population_detector(bundle_dir: Path, spec: PopulationCheckSpec | None) -> PopulationDetector | None:
    if spec is None:
        return None
    path = verify_file(bundle_dir, spec.filename, spec.sha256)
    try:
        detector = PopulationDetector.load(path)
    except (OSError, KeyError, ValueError) as exc:
        raise BundleError(f"{path}: unreadable population check ({exc})") from exc
    if abs(detector.threshold - spec.threshold) > 1e-9:
        raise BundleError(f"{path}: threshold {detector.threshold} does not match metadata ({spec.threshold})")
    return detector
