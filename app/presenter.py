"""Response building shared by the routes: one place turns an `Analysis` into the fields of a response."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from app.schemas import InputCheck, InputInfo, ModelInfo
from app.service import Analysis, ModelService


def model_info(service: ModelService) -> ModelInfo:
    identity = service.model.identity
    return ModelInfo(name=identity.name, version=identity.version, backbone=identity.backbone, sha256=identity.sha256)


def prediction_fields(service: ModelService, analysis: Analysis) -> dict[str, Any]:
    prediction = analysis.prediction
    image = prediction.image
    return {
        "probability": prediction.probability,
        "label": prediction.label,
        "threshold": prediction.threshold,
        "operating_point": prediction.operating_point,
        "model": model_info(service),
        "prediction_id": analysis.prediction_id,
        "warnings": list(prediction.warnings),
        "input": InputInfo(format=image.source_format, width=image.width, height=image.height),
        "input_check": InputCheck(**asdict(prediction.input_check)),
        "disclaimer": prediction.disclaimer,
    }
