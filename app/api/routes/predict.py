from __future__ import annotations

from fastapi import APIRouter, Request

from app.api.deps import DecisionDep, ServiceDep
from app.api.errors import error_responses
from app.api.uploads import UPLOAD_REQUEST_BODY, read_upload
from app.bundle import RESEARCH_DISCLAIMER
from app.schemas import InputInfo, ModelInfo, Prediction
from app.service import Analysis, ModelService

router = APIRouter(tags=["predict"])


def model_info(service: ModelService) -> ModelInfo:
    m = service.metadata
    return ModelInfo(name=m.name, version=m.version, backbone=m.backbone, sha256=m.checksums.onnx_sha256)


def prediction_fields(service: ModelService, analysis: Analysis, decision) -> dict:
    image = analysis.image
    size = service.metadata.input_size
    warnings = list(image.warnings)
    if image.height < size[0] or image.width < size[1]:
        warnings.append(
            f"The image ({image.width}x{image.height}) is smaller than the model input ({size[1]}x{size[0]}) "
            "and was upscaled; the result may be unreliable."
        )
    return {
        "probability": analysis.probability,
        "label": "PNEUMONIA" if analysis.probability >= decision.threshold else "NORMAL",
        "threshold": decision.threshold,
        "operating_point": decision.operating_point,
        "model": model_info(service),
        "prediction_id": analysis.prediction_id,
        "warnings": warnings,
        "input": InputInfo(format=image.source_format, width=image.width, height=image.height),
        "disclaimer": RESEARCH_DISCLAIMER,
    }


@router.post(
    "/predict",
    response_model=Prediction,
    summary="P(pneumonia) for one chest X-ray (research use only)",
    description="Upload one JPEG, PNG or DICOM chest X-ray as multipart field `file`, or as the raw body with "
    "Content-Type image/jpeg, image/png or application/dicom. "
    "Returns the model's probability and the label at the chosen operating point. Not a diagnosis.",
    openapi_extra={"requestBody": UPLOAD_REQUEST_BODY},
    responses=error_responses(400, 413, 415, 422, 503),
)
async def predict(request: Request, service: ServiceDep, decision: DecisionDep) -> Prediction:
    data = await read_upload(request)
    analysis = await service.analyse(data)
    return Prediction(**prediction_fields(service, analysis, decision))
