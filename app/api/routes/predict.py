from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, Response

from app.api.audit import noted_upload
from app.api.deps import DecisionDep, PolicyDep, ServiceDep
from app.api.dicom import SR_FORMAT, dicom_response, dicom_response_doc, dicom_source
from app.api.errors import error_responses
from app.api.uploads import RAW_MEDIA_TYPES, UPLOAD_REQUEST_BODY, read_upload
from app.presenter import prediction_fields
from app.schemas import Prediction

router = APIRouter(tags=["predict"])


@router.post(
    "/predict",
    response_model=Prediction,
    summary="P(pneumonia) for one chest X-ray (research use only)",
    description="Upload one JPEG, PNG or DICOM chest X-ray as multipart field `file`, or as the raw body with "
    f"Content-Type {', '.join(RAW_MEDIA_TYPES)}. "
    "Returns the model's probability and the label at the chosen operating point, and the input check's verdict "
    "(`input_check`). An image that is not a frontal chest X-ray is refused with 422 `not_a_chest_xray` unless "
    "?input_check=warn or off. Not a diagnosis.",
    openapi_extra={"requestBody": UPLOAD_REQUEST_BODY},
    responses={
        **error_responses(400, 413, 415, 422, 503),
        **dicom_response_doc(SR_FORMAT, {200: {"description": "Prediction JSON."}}),
    },
)
async def predict(
    request: Request,
    service: ServiceDep,
    decision: DecisionDep,
    policy: PolicyDep,
    format: Annotated[
        Literal["json", "dicom-sr"], Query(description="json, or dicom-sr: a DICOM SR for a DICOM upload")
    ] = "json",
) -> Prediction | Response:
    data = await read_upload(request)
    source = dicom_source(data) if format == SR_FORMAT else None  # 415 dicom_required before any scoring
    analysis = await service.analyse(data, decision, policy=policy, **noted_upload(request))
    if source is not None:
        return await dicom_response(source, analysis, format)
    return Prediction(**prediction_fields(service, analysis))
