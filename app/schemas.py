"""Response models (with OpenAPI examples)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from pneumonia.bundle import RESEARCH_DISCLAIMER, BundleMetadata, OperatingPoint
from pneumonia.explain import COLOUR_SCALE, DEFAULT_METHOD, METHOD_NAMES
from pneumonia.input_check import Policy

_EXAMPLE_MODEL: dict[str, Any] = {
    "name": "mobilenetv2-192",
    "version": "1.0.0",
    "backbone": "mobilenetv2",
    "sha256": "3f5a" + "0" * 60,
}


class ModelInfo(BaseModel):
    model_config = ConfigDict(protected_namespaces=())
    name: str
    version: str
    backbone: str
    sha256: str = Field(description="SHA-256 of the served model.onnx")


class InputInfo(BaseModel):
    format: str = Field(description="Format detected from the bytes: JPEG, PNG or DICOM")
    width: int
    height: int


class InputCheck(BaseModel):
    """The input check's verdict: is this a frontal chest X-ray the model may be asked about?"""

    accepted: bool = Field(description="False: refused (HTTP 422 under policy refuse; a warning under warn)")
    reasons: list[str] = Field(
        description="Why it was refused, and what was done to it (e.g. 'rotated back to upright')"
    )
    policy: Policy
    detector: Literal["available", "unavailable", "off"] = Field(
        description="unavailable: the bundle has no fitted detector (schema 1), only cheap pixel checks ran"
    )
    ood_score: float | None = Field(
        None, description="Out-of-distribution score (0: typical validation X-ray; 1: its 99th percentile)"
    )
    ood_threshold: float | None = Field(None, description="Scores above this are refused")
    orientation: str = Field("upright", description="Orientation found in the upload")
    rotated_back_degrees: int = Field(0, description="Counter-clockwise turn applied before scoring (0, 90, 180, 270)")
    mirrored: bool = Field(False, description="True when the upload was flipped back left-right before scoring")
    measurements: dict[str, float] = Field(default_factory=dict, description="The numbers behind each check")
    note: str | None = None
    population: Literal["inside", "outside", "unchecked"] = Field(
        "unchecked",
        description="Whose film: inside the model's population (GET /model `population`), outside it, or unchecked "
        "(policy off, or a bundle without a population check and no DICOM age)",
    )
    age: str = Field("age unknown", description="The patient's age from DICOM tags, in words; 'age unknown' without")
    population_score: float | None = Field(None, description="P(outside the population) from the learned check")
    population_threshold: float | None = Field(None, description="Scores above this are outside the population")
    refusal_code: str | None = Field(
        None,
        description="Why it was refused, as an error code: not_a_chest_xray, outside_population, poor_image_quality",
    )


class Prediction(BaseModel):
    model_config = ConfigDict(
        protected_namespaces=(),
        json_schema_extra={
            "examples": [
                {
                    "probability": 0.83,
                    "label": "PNEUMONIA",
                    "threshold": 0.5,
                    "operating_point": "balanced",
                    "model": _EXAMPLE_MODEL,
                    "prediction_id": "9b2f6c1e0d4a4b57a1f0c3d2e8b7a6f5",
                    "warnings": [],
                    "input": {"format": "JPEG", "width": 1024, "height": 1024},
                    "input_check": {
                        "accepted": True,
                        "reasons": [],
                        "policy": "refuse",
                        "detector": "available",
                        "ood_score": 0.12,
                        "ood_threshold": 1.43,
                        "orientation": "upright",
                        "rotated_back_degrees": 0,
                        "mirrored": False,
                        "measurements": {"pixel_std": 52.1, "noise_ratio": 0.1, "aspect_ratio": 1.2},
                    },
                    "disclaimer": RESEARCH_DISCLAIMER,
                }
            ]
        },
    )
    probability: float = Field(ge=0.0, le=1.0, description="Model output P(pneumonia); not a calibrated clinical risk.")
    label: Literal["NORMAL", "PNEUMONIA"] = Field(description="PNEUMONIA if probability >= threshold")
    threshold: float = Field(ge=0.0, le=1.0)
    operating_point: str = Field(description="Name of the operating point used, or 'custom' for ?threshold=")
    model: ModelInfo
    prediction_id: str = Field(description="Use with GET /explain/{prediction_id} while it is cached")
    warnings: list[str]
    input: InputInfo
    input_check: InputCheck
    disclaimer: str = RESEARCH_DISCLAIMER


class ExplanationMap(BaseModel):
    width: int = Field(gt=0)
    height: int = Field(gt=0)
    values: str = Field(
        description="Base64 of width*height little-endian float32 values, row-major (row 0 = top of the image), "
        "each in [0, 1]: the raw map, scaled so its maximum is 1 (all 0 when nothing supports the class)"
    )
    resolution: Literal["model_input", "native"] = Field(
        description="model_input: the map resized to the model's input (e.g. 192x192, the image as the model saw "
        "it, stretched to a square); native: the method's own grid"
    )
    method: Literal[METHOD_NAMES]  # type: ignore[valid-type]
    layers: list[str] = Field(description="Model layers the map is read from (empty for the baselines)")
    explained_class: Literal["NORMAL", "PNEUMONIA"]


class Explanation(Prediction):
    model_config = ConfigDict(
        protected_namespaces=(),
        json_schema_extra={
            "examples": [
                {
                    **Prediction.model_config["json_schema_extra"]["examples"][0],  # type: ignore[index,dict-item]
                    "heatmap": "iVBORw0KGgoAAAANSUhEUgAA...",
                    "heatmap_format": "png",
                    "method": DEFAULT_METHOD,
                    "explained_class": "PNEUMONIA",
                    "map": {
                        "width": 192,
                        "height": 192,
                        "values": "AAAAAAAAgD8...",
                        "resolution": "model_input",
                        "method": DEFAULT_METHOD,
                        "layers": ["block_6_expand_relu"],
                        "explained_class": "PNEUMONIA",
                    },
                }
            ]
        },
    )
    heatmap: str = Field(
        description="Base64 PNG: the map over the image (at most the overlay cap on its longer side, see "
        "`overlay`), with a colour-scale strip added to the right of the image, never over it. " + COLOUR_SCALE
    )
    heatmap_format: Literal["png"] = "png"
    method: Literal[METHOD_NAMES] = Field(description="Saliency method of the map (?method=)")  # type: ignore[valid-type]
    explained_class: Literal["NORMAL", "PNEUMONIA"] = Field(
        description="The class the map explains: the predicted label. PNEUMONIA maps the gradient of the logit, "
        "NORMAL that of the negative logit (evidence for NORMAL)"
    )
    map: ExplanationMap


class Health(BaseModel):
    model_config = ConfigDict(protected_namespaces=())
    status: Literal["ready"]
    model: ModelInfo
    explain: bool


class ModelCard(BaseModel):
    model_config = ConfigDict(protected_namespaces=())
    name: str
    version: str
    backbone: str
    input_size: dict[str, int]
    preprocessing: dict
    class_names: tuple[str, str]
    positive_class: str
    operating_points: list[OperatingPoint]
    default_operating_point: str
    validation: dict
    stress: dict[str, dict[str, float]]
    data: dict
    intended_use: str
    limitations: list[str]
    explain_available: bool
    explanations: dict | None = Field(
        default=None,
        description="default_method (what /explain serves without ?method=), methods (each with the layers of "
        "model.keras it reads), baselines, starts_from_layer (the layer whose activation model.onnx gives /explain; "
        "null: maps run from the image); None when explanations are unavailable",
    )
    input_check: dict | None = Field(
        description="The fitted input check (method, threshold, validation acceptance); None: unavailable"
    )
    adaptation: dict | None = Field(
        description="How this bundle was adapted to a site's unlabeled images; None: not adapted"
    )
    site_calibration: dict | None = Field(
        None,
        description="How the calibration and operating points were re-chosen on a site's labelled sample (the "
        "thresholds then come from that sample, not validation); None: not site-calibrated",
    )
    population: dict | None = Field(
        None, description="Whose films the model was trained on (ages, views, sites, source); None: not declared"
    )
    population_check: dict | None = Field(None, description="The learned population check; None: unavailable")
    image_quality: dict | None = Field(None, description="The exposure/contrast range accepted; None: unchecked")
    checksums: dict[str, str]
    disclaimer: str = RESEARCH_DISCLAIMER

    @classmethod
    def from_metadata(
        cls, metadata: BundleMetadata, explain_available: bool, explanations: dict | None = None
    ) -> ModelCard:
        return cls(
            name=metadata.name,
            version=metadata.version,
            backbone=metadata.backbone,
            input_size={"height": metadata.preprocessing.input_height, "width": metadata.preprocessing.input_width},
            preprocessing=metadata.preprocessing.model_dump(mode="json"),
            class_names=metadata.class_names,
            positive_class=metadata.positive_class,
            operating_points=metadata.operating_points,
            default_operating_point=metadata.default_operating_point,
            validation=metadata.validation.model_dump(mode="json"),
            stress=metadata.stress,
            data=metadata.data.model_dump(mode="json"),
            intended_use=metadata.intended_use,
            limitations=metadata.limitations,
            explain_available=explain_available,
            explanations=explanations,
            input_check=metadata.input_check.model_dump(mode="json") if metadata.input_check else None,
            adaptation=metadata.adaptation.model_dump(mode="json") if metadata.adaptation else None,
            site_calibration=metadata.site_calibration.model_dump(mode="json") if metadata.site_calibration else None,
            population=metadata.population.model_dump(mode="json") if metadata.population else None,
            population_check=metadata.population_check.model_dump(mode="json") if metadata.population_check else None,
            image_quality=metadata.image_quality.model_dump(mode="json") if metadata.image_quality else None,
            checksums=metadata.checksums.model_dump(mode="json"),
            disclaimer=metadata.disclaimer or RESEARCH_DISCLAIMER,
        )
