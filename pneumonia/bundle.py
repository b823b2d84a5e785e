"""The model bundle: the one contract between `training/` (which writes it) and `app/` (which serves it).

A bundle is a directory holding:
    model.onnx     served with onnxruntime; input: raw RGB pixels, float32 0..255, NHWC
    model.keras    the same network as a Keras model, used only for Grad-CAM
    metadata.json  `BundleMetadata` below, including SHA-256 checksums of both model files
    MODEL_CARD.md  human-readable summary (optional for loading)

This module must stay importable without TensorFlow or onnxruntime: the service imports it at start-up
and training imports it to write bundles.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

# 2: adds `input_check` (the out-of-distribution detector and orientation check) and `adaptation`.
# 3: adds `population` (whose films the model was trained on), `population_check` (the learned adult-film
#    detector) and `image_quality` (the exposure/contrast range of the training films).
# Older bundles still read: version 1 serves with the input check's detector "unavailable", versions 1-2
# without the population and quality checks (DICOM tags are still read), and say so in every verdict.
SCHEMA_VERSION: Literal[3] = 3
ONNX_FILENAME = "model.onnx"
KERAS_FILENAME = "model.keras"
METADATA_FILENAME = "metadata.json"
MODEL_CARD_FILENAME = "MODEL_CARD.md"
INPUT_CHECK_FILENAME = "input_check.npz"
POPULATION_CHECK_FILENAME = "population_check.npz"
CLASS_NAMES: tuple[str, str] = ("NORMAL", "PNEUMONIA")

# Largest |P_onnx - P_keras| accepted between the two models of a bundle (export check, service self-test).
# float32 operation-order noise through ~100 layers measured up to 1.1e-4 on an untrained EfficientNetB0 and
# 1e-6 on the shipped model; conversion faults (augmentation left active, lost preprocessing) differ by > 1e-2.
PARITY_TOLERANCE = 1e-3
EXPLAIN_ACTIVATION_OUTPUT = "explain_activation"

RESEARCH_DISCLAIMER = (
    "Research use only. This model is not a medical device, has not been clinically validated, "
    "and must not be used for diagnosis, triage or any clinical decision."
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())


class OperatingPoint(_Strict):
    """A named decision threshold and what it achieved on the validation split."""

    name: str
    threshold: float = Field(ge=0.0, le=1.0)
    sensitivity: float = Field(ge=0.0, le=1.0, description="Validation sensitivity (recall) at this threshold.")
    specificity: float = Field(ge=0.0, le=1.0, description="Validation specificity at this threshold.")
    description: str = ""


class Estimate(_Strict):
    """A metric measured on a split, with a 95% bootstrap confidence interval when one was computed."""

    value: float
    ci_low: float | None = None
    ci_high: float | None = None


class SplitMetrics(_Strict):
    split: str
    n_images: int
    n_positive: int
    threshold: float
    metrics: dict[str, Estimate]
    confusion_matrix: list[list[int]] = Field(description="[[TN, FP], [FN, TP]] at `threshold`.")


class LogitCalibration(_Strict):
    """Affine calibration of the logit, fitted on validation and baked into the logit layer:
    served probability = sigmoid(scale * logit + bias). scale=1, bias=0 means uncalibrated."""

    method: Literal["platt", "none"]
    scale: float = Field(gt=0.0)
    bias: float
    fitted_on: Literal["validation"] = "validation"


class Preprocessing(_Strict):
    """What the model expects. Everything else (scaling, normalisation) is inside the model."""

    input_height: int = Field(gt=0)
    input_width: int = Field(gt=0)
    channels: Literal[3] = 3
    color: Literal["RGB"] = "RGB"
    dtype: Literal["float32"] = "float32"
    layout: Literal["NHWC"] = "NHWC"
    value_range: tuple[float, float] = (0.0, 255.0)
    resize: str = "grayscale, then bilinear resize to input size ignoring aspect ratio, replicated to RGB"


class DataSummary(_Strict):
    dataset: str
    source: str
    licence: str
    split_method: str
    split_seed: int
    counts: dict[str, dict[str, int]] = Field(description="Images per split and class.")
    # Provenance recorded by `train` (absent from bundles exported before it was recorded):
    card: str | None = Field(None, description="The dataset card (README) the training data came with.")
    content_sha256: str | None = Field(
        None, pattern=r"^[0-9a-f]{64}$", description="SHA-256 over the training folder's image paths and contents."
    )
    files: int | None = Field(None, ge=0, description="Images the content hash covers.")


class FileChecksums(_Strict):
    onnx_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    keras_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class InputCheckSpec(_Strict):
    """The fitted input check stored beside the models (pneumonia/input_check.py reads it)."""

    filename: str = INPUT_CHECK_FILENAME
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    statistics_outputs: list[str] = Field(min_length=1, description="ONNX outputs with per-channel [E[x], E[x^2]].")
    layers: list[str] = Field(min_length=1, description="Layers of model.keras whose statistics those outputs are.")
    threshold: float = Field(description="Out-of-distribution score above which an image is refused.")
    fitted_on: str = Field(description="Images the detector and the orientation classifier were fitted on.")
    threshold_chosen_on: str
    validation_acceptance: float = Field(ge=0.0, le=1.0, description="Share of clean validation X-rays accepted.")
    method: str


class ExplainActivation(_Strict):
    """An extra output of model.onnx: the activation (N, h, w, C) of one model.keras layer, from the same run as
    the probability. /explain feeds it to the part of model.keras after that layer (pneumonia/explain), so TensorFlow
    does not repeat the forward pass up to it."""

    output: str = EXPLAIN_ACTIVATION_OUTPUT
    layer: str = Field(description="Layer of model.keras whose activation the output is.")


class Adaptation(_Strict):
    """How an adapted bundle was derived from its source (python -m training adapt)."""

    method: str
    source_bundle: str
    source_version: str
    n_images: int = Field(ge=1)
    images_sha256: str = Field(description="SHA-256 over the sorted SHA-256s of the adaptation images.")
    adapted_at: datetime
    skipped: int = 0
    note: str = ""


class SiteCalibration(_Strict):
    """How the calibration and operating points were re-chosen on a site's labelled sample (`python -m training
    calibrate`). The served probability is sigmoid(scale * z + bias), z the source bundle's served logit (its own
    validation calibration, `calibration`, stays baked in underneath). Metrics are measured on the site's sample:
    `before` at the source's thresholds, `after` at the new ones on the same images (in-sample, so optimistic),
    `cross_validated` the whole procedure re-run on k-1 folds and judged on the held-out fold."""

    method: str
    calibration: str = Field(description="'bias' (the Platt bias alone, scale 1) or 'full' (scale and bias).")
    source_bundle: str
    source_version: str
    n_normal: int = Field(ge=1)
    n_pneumonia: int = Field(ge=1)
    images_sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="SHA-256 over the sorted image SHA-256s.")
    calibrated_at: datetime
    refused: int = Field(0, ge=0, description="Images left out: refused by the input check or unreadable.")
    scale: float = Field(gt=0.0)
    bias: float
    prevalence: float = Field(gt=0.0, lt=1.0, description="Share of PNEUMONIA the probability is calibrated to.")
    roc_auc: Estimate
    before: dict[str, dict[str, Estimate]] = Field(description="Operating point -> metric, source thresholds.")
    after: dict[str, dict[str, Estimate]] = Field(description="Operating point -> metric, new thresholds.")
    cross_validated: dict[str, dict[str, Estimate]] = Field(default_factory=dict)
    warnings: list[str] = Field(default_factory=list)
    note: str = ""


class Population(_Strict):
    """Whose chest films the model learned from: the population its answers are about, and nothing wider."""

    age_min_years: float = Field(ge=0.0, description="Youngest patient age in the training data, in years.")
    age_max_years: float = Field(
        ge=0.0, description="Oldest age in whole years (5 covers children up to their sixth birthday)."
    )
    views: list[str] = Field(min_length=1, description="DICOM ViewPosition values of the training films, e.g. AP.")
    modality: str = Field(description="What the films are, in words (DICOM Modality CR/DX: projection radiographs).")
    sites: int = Field(ge=1, description="Number of hospitals the training films came from.")
    source: str = Field(description="The dataset and where it came from.")

    def covers_age(self, years: float) -> bool:
        return self.age_min_years <= years < self.age_max_years + 1


class PopulationCheckSpec(_Strict):
    """The learned check that a film is of the training population (pneumonia/population.py reads it)."""

    filename: str = POPULATION_CHECK_FILENAME
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    threshold: float = Field(description="P(outside the population) above which a film is flagged.")
    fitted_on: str
    threshold_chosen_on: str
    validation_acceptance: float = Field(ge=0.0, le=1.0, description="Share of clean validation films accepted.")
    held_out: dict[str, float] = Field(
        default_factory=dict,
        description="Share of each adult collection flagged when the check was fitted without it (generalisation).",
    )
    method: str


# What a bundle's evidence chose for films outside its image-quality range (a subset of the input check's Policy)
QualityAction = Literal["refuse", "warn"]


class ImageQualitySpec(_Strict):
    """The exposure and contrast range of the training films, measured on the model input (0..255 gray)."""

    min_dynamic_range: float = Field(description="Lowest 5th-95th percentile spread accepted, in gray levels.")
    min_mean: float
    max_mean: float
    measured_on: str
    action: QualityAction = Field(
        description="What a film outside the contrast range gets (and outside the exposure range, when "
        "`exposure_action` is None), chosen by evidence."
    )
    evidence: str
    exposure_action: QualityAction | None = Field(
        default=None,
        description="What an under- or overexposed film gets, chosen by its own evidence (gamma and gray-level "
        "shifts of validation). None in bundles written before: `action` applies to both rules.",
    )
    exposure_evidence: str | None = None


class BundleMetadata(_Strict):
    schema_version: Literal[1, 2, 3] = SCHEMA_VERSION
    name: str = Field(description="Human-readable model name, e.g. 'mobilenetv2-192'.")
    version: str
    backbone: str
    package_version: str
    created_at: datetime
    class_names: tuple[str, str] = CLASS_NAMES
    positive_class: Literal["PNEUMONIA"] = "PNEUMONIA"
    preprocessing: Preprocessing
    onnx_input_name: str
    onnx_output_name: str
    gradcam_layer: str = Field(description="Layer of model.keras whose activations Grad-CAM uses.")
    logit_layer: str = Field(description="Layer of model.keras that outputs the logit (before the sigmoid).")
    calibration: LogitCalibration
    default_operating_point: str
    operating_points: list[OperatingPoint] = Field(min_length=1)
    validation: SplitMetrics
    stress: dict[str, dict[str, float]] = Field(
        default_factory=dict, description="Validation metrics under perturbations (contrast, gamma, blur...)."
    )
    training: dict[str, str | int | float | bool | list[str] | None] = Field(
        default_factory=dict, description="The whole training configuration, plus what training and export measured."
    )
    data: DataSummary
    intended_use: str
    limitations: list[str]
    disclaimer: str = RESEARCH_DISCLAIMER
    checksums: FileChecksums
    input_check: InputCheckSpec | None = Field(default=None, description="None in bundles before schema 2.")
    adaptation: Adaptation | None = None
    site_calibration: SiteCalibration | None = None
    explain_activation: ExplainActivation | None = Field(
        default=None, description="None (bundles exported before it): /explain runs model.keras from the input."
    )
    population: Population | None = Field(default=None, description="None in bundles before schema 3.")
    population_check: PopulationCheckSpec | None = Field(default=None, description="None before schema 3.")
    image_quality: ImageQualitySpec | None = Field(default=None, description="None before schema 3.")

    @model_validator(mode="after")
    def _default_point_exists(self) -> BundleMetadata:
        names = [p.name for p in self.operating_points]
        if len(set(names)) != len(names):
            raise ValueError(f"operating point names must be unique, got {names}")
        if self.default_operating_point not in names:
            raise ValueError(f"default_operating_point {self.default_operating_point!r} is not one of {names}")
        return self

    def operating_point(self, name: str | None = None) -> OperatingPoint:
        wanted = name or self.default_operating_point
        for point in self.operating_points:
            if point.name == wanted:
                return point
        raise KeyError(wanted)

    @property
    def input_size(self) -> tuple[int, int]:
        return self.preprocessing.input_height, self.preprocessing.input_width


class BundleError(RuntimeError):
    """The bundle directory cannot be served: missing files, invalid metadata or checksum mismatch."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_metadata(bundle_dir: Path) -> BundleMetadata:
    path = Path(bundle_dir) / METADATA_FILENAME
    if not path.is_file():
        raise BundleError(f"{path}: metadata.json is missing")
    try:
        return BundleMetadata.model_validate_json(path.read_bytes())
    except ValidationError as exc:
        raise BundleError(f"{path}: invalid metadata: {_one_line(exc)}") from exc


def _one_line(exc: ValidationError, limit: int = 5) -> str:
    """`field.path: message` for the first few errors, on one line (the start-up refusal is one log line)."""
    parts = []
    for error in exc.errors()[:limit]:
        where = ".".join(str(p) for p in error.get("loc", ()))
        parts.append(f"{where}: {error['msg']}" if where else str(error["msg"]))
    more = f" (+{exc.error_count() - limit} more)" if exc.error_count() > limit else ""
    return "; ".join(parts).replace("\n", " ") + more


def verify_file(bundle_dir: Path, filename: str, expected_sha256: str) -> Path:
    """Return the path of a model file after checking it exists and matches its recorded checksum."""
    path = Path(bundle_dir) / filename
    if not path.is_file():
        raise BundleError(f"{path}: file is missing")
    actual = sha256_file(path)
    if actual != expected_sha256:
        raise BundleError(
            f"{path}: checksum mismatch (metadata says {expected_sha256[:12]}…, file is {actual[:12]}…); "
            "the file was modified or truncated after export"
        )
    return path


def write_metadata(bundle_dir: Path, metadata: BundleMetadata) -> Path:
    path = Path(bundle_dir) / METADATA_FILENAME
    path.write_text(json.dumps(metadata.model_dump(mode="json"), indent=2) + "\n")
    return path


def utc_now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)
