from __future__ import annotations

import base64
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Request, Response

from app.api.deps import DecisionDep, ServiceDep
from app.api.errors import ApiError, error_responses
from app.api.routes.predict import prediction_fields
from app.api.uploads import UPLOAD_REQUEST_BODY, read_upload
from app.bundle import RESEARCH_DISCLAIMER
from app.schemas import Explanation
from app.service import Analysis, ModelService

router = APIRouter(tags=["explain"])

FormatQuery = Annotated[
    Literal["json", "png"], Query(description="json: Explanation with a base64 PNG; png: the overlay image itself")
]
PNG_RESPONSE = {
    200: {
        "description": "Explanation JSON, or with ?format=png the overlay PNG (headers X-Probability, X-Label, X-Disclaimer)",
        "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
    }
}


def _respond(service: ModelService, analysis: Analysis, decision, fmt: str) -> Explanation | Response:
    fields = prediction_fields(service, analysis, decision)
    assert analysis.heatmap_png is not None
    if fmt == "png":
        return Response(
            content=analysis.heatmap_png,
            media_type="image/png",
            headers={
                "X-Disclaimer": RESEARCH_DISCLAIMER,
                "X-Probability": f"{analysis.probability:.6f}",
                "X-Label": fields["label"],
                "X-Threshold": f"{decision.threshold:g}",
                "X-Prediction-Id": analysis.prediction_id,
            },
        )
    return Explanation(**fields, heatmap=base64.b64encode(analysis.heatmap_png).decode("ascii"), heatmap_format="png")


@router.post(
    "/explain",
    response_model=Explanation,
    summary="Prediction plus a Grad-CAM overlay (research use only)",
    description="Same input as /predict. The heatmap shows which regions drove the model's logit; it is not a "
    "localisation of disease.",
    openapi_extra={"requestBody": UPLOAD_REQUEST_BODY},
    responses={**error_responses(400, 413, 415, 422, 503), **PNG_RESPONSE},
)
async def explain(request: Request, service: ServiceDep, decision: DecisionDep, format: FormatQuery = "json"):
    data = await read_upload(request)
    analysis = await service.analyse(data, explain=True)
    return _respond(service, analysis, decision, format)


@router.get(
    "/explain/{prediction_id}",
    response_model=Explanation,
    summary="Grad-CAM overlay for a recent /predict, from the prediction store",
    responses={**error_responses(404, 422, 503), **PNG_RESPONSE},
)
async def explain_cached(
    service: ServiceDep,
    decision: DecisionDep,
    prediction_id: Annotated[str, Path(max_length=64, description="prediction_id from /predict")],
    format: FormatQuery = "json",
):
    analysis = await service.explain_cached(prediction_id)
    if analysis is None:
        raise ApiError(
            404, "prediction_not_found",
            "No recent prediction with this id: it is unknown or expired (predictions are kept for "
            f"{service.settings.cache_ttl_s:g} s, never on disk). Upload the image to POST /explain instead.",
        )
    return _respond(service, analysis, decision, format)
