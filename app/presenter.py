"""Response building shared by the routes: one place turns an `Analysis` into the fields of a response."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from app.bundle import RESEARCH_DISCLAIMER
from app.schemas import InputCheck, InputInfo, ModelInfo
from app.service import Analysis, ModelService


def model_info(service: ModelService) -> ModelInfo:
    m = service.metadata
    return ModelInfo(name=m.name, version=m.version, backbone=m.backbone, sha256=m.checksums.onnx_sha256)


def prediction_fields(
    service: ModelService, analysis: Analysis, threshold: float, operating_point: str
) -> dict[str, Any]:
    image = analysis.image
    check = analysis.input_check
    warnings = [*image.warnings, *service.size_warnings(image)]
    # Under `warn` a refused image is answered; its reasons must be as visible as any other warning.
    # Rotated/mirrored notes are always surfaced: the label is for the image turned back.
    if not check.accepted or check.rotated_back_degrees or check.mirrored:
        warnings += [f"Input check: {reason}" for reason in check.reasons]
    return {
        "probability": analysis.probability,
        "label": "PNEUMONIA" if analysis.probability >= threshold else "NORMAL",
        "threshold": threshold,
        "operating_point": operating_point,
        "model": model_info(service),
        "prediction_id": analysis.prediction_id,
        "warnings": warnings,
        "input": InputInfo(format=image.source_format, width=image.width, height=image.height),
        "input_check": InputCheck(**asdict(check)),
        "disclaimer": RESEARCH_DISCLAIMER,
    }
