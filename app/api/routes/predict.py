from __future__ import annotations

from fastapi import APIRouter, Request

from app.api.deps import DecisionDep, PolicyDep, ServiceDep
from app.api.errors import error_responses
from app.api.uploads import UPLOAD_REQUEST_BODY, read_upload
from app.presenter import prediction_fields
from app.schemas import Prediction

router = APIRouter(tags=["predict"])


@router.post(
    "/predict",
    response_model=Prediction,
    summary="P(pneumonia) for one chest X-ray (research use only)",
    description="Upload one JPEG, PNG or DICOM chest X-ray as multipart field `file`, or as the raw body with "
    "Content-Type image/jpeg, image/png or application/dicom. "
    "Returns the model's probability and the label at the chosen operating point, and the input check's verdict "
    "(`input_check`). An image that is not a frontal chest X-ray is refused with 422 `not_a_chest_xray` unless "
    "?input_check=warn or off. Not a diagnosis.",
    openapi_extra={"requestBody": UPLOAD_REQUEST_BODY},
    responses=error_responses(400, 413, 415, 422, 503),
)
async def predict(request: Request, service: ServiceDep, decision: DecisionDep, policy: PolicyDep) -> Prediction:
    data = await read_upload(request)
    analysis = await service.analyse(data, decision, policy=policy)
    return Prediction(**prediction_fields(service, analysis))
