from __future__ import annotations

import base64
import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request, Response

from app.api.audit import note_stored_upload, noted_upload
from app.api.deps import DecisionDep, PolicyDep, ServiceDep
from app.api.dicom import SC_FORMAT, dicom_response, dicom_response_doc, dicom_source
from app.api.errors import ApiError, error_responses
from app.api.uploads import UPLOAD_REQUEST_BODY, read_upload
from app.presenter import prediction_fields
from app.schemas import Explanation, ExplanationMap
from app.service import Analysis, ModelService
from pneumonia.bundle import RESEARCH_DISCLAIMER
from pneumonia.errors import ErrorCode
from pneumonia.explain import (
    COLOUR_SCALE,
    DEFAULT_METHOD,
    METHOD_NAMES,
    OVERLAY_MAX_SIDE,
    encode_map,
)

router = APIRouter(tags=["explain"])

FormatQuery = Annotated[
    Literal["json", "png"], Query(description="json: Explanation with a base64 PNG; png: the overlay image itself")
]
UploadFormatQuery = Annotated[
    Literal["json", "png", "dicom-sc"],
    Query(description="json: Explanation with a base64 PNG; png: the overlay image itself; dicom-sc: the overlay as a "
          "DICOM Secondary Capture in the upload's study (DICOM uploads only)"),
]  # fmt: skip
MethodQuery = Annotated[
    Literal[METHOD_NAMES],  # type: ignore[valid-type]
    Query(
        description=f"Saliency method (default {DEFAULT_METHOD}, chosen by the faithfulness benchmark: the docs' "
        "'Explanations' page). central_blob and random are the benchmark's baselines: maps that do "
        "not depend on the model, served for comparison. Unknown names: 422."
    ),
]
OverlayQuery = Annotated[
    Literal["capped", "full"],
    Query(description=f"capped (default): the image in the overlay at most {OVERLAY_MAX_SIDE} px on its longer side "
          "(the colour-scale strip beside it adds a little width); full: at the uploaded image's size (a large "
          "film makes a large response)"),
]  # fmt: skip


def _overlay_side(overlay: str) -> int | None:
    return None if overlay == "full" else OVERLAY_MAX_SIDE


PNG_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Explanation JSON, or with ?format=png the overlay PNG (headers X-Probability, X-Label, "
        "X-Disclaimer, X-Method, X-Explained-Class, X-Map-Layers, X-Warnings: a JSON list). " + COLOUR_SCALE,
        "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
    }
}


def _respond(service: ModelService, analysis: Analysis, fmt: str) -> Explanation | Response:
    fields = prediction_fields(service, analysis)
    prediction, result = analysis.prediction, analysis.explanation
    if result is None:  # the service always explains when asked; a None here is a programming error
        raise RuntimeError("analysis without an explanation")
    if fmt == "png":
        return Response(
            content=result.overlay_png,
            media_type="image/png",
            headers={
                "X-Disclaimer": RESEARCH_DISCLAIMER,
                "X-Probability": f"{prediction.probability:.6f}",
                "X-Label": fields["label"],
                "X-Threshold": f"{prediction.threshold:g}",
                "X-Prediction-Id": analysis.prediction_id,
                "X-Method": result.method,
                "X-Explained-Class": result.explained_class,
                "X-Map-Layers": ",".join(result.layers),
                "X-Warnings": json.dumps(fields["warnings"]),  # ASCII: json escapes anything else
                "X-Input-Check": fields["input_check"].model_dump_json(),  # ASCII too (ensure_ascii)
                "X-Input-Accepted": "true" if prediction.accepted else "false",
            },
        )
    height, width = result.map.shape
    return Explanation(
        **fields,
        heatmap=base64.b64encode(result.overlay_png).decode("ascii"),
        heatmap_format="png",
        method=result.method,
        explained_class=result.explained_class,
        map=ExplanationMap(
            width=width,
            height=height,
            values=encode_map(result.map),
            resolution="model_input",
            method=result.method,
            layers=list(result.layers),
            explained_class=result.explained_class,
        ),
    )


@router.post(
    "/explain",
    response_model=Explanation,
    summary="Prediction plus a saliency map and its overlay (research use only)",
    description="Same input as /predict. The map explains the predicted class: for PNEUMONIA the regions that "
    "raised the model's logit, for NORMAL those that lowered it (evidence for NORMAL). `map` holds the raw values "
    "(base64 float32, 0..1, at the model-input resolution); `heatmap` is the overlay PNG. "
    + COLOUR_SCALE
    + " It shows what drove the model's score, not a localisation of disease.",
    openapi_extra={"requestBody": UPLOAD_REQUEST_BODY},
    responses={**error_responses(400, 413, 415, 422, 503), **dicom_response_doc(SC_FORMAT, PNG_RESPONSE)},
)
async def explain(
    request: Request,
    service: ServiceDep,
    decision: DecisionDep,
    policy: PolicyDep,
    format: UploadFormatQuery = "json",
    method: MethodQuery = DEFAULT_METHOD,
    overlay: OverlayQuery = "capped",
):
    data = await read_upload(request)
    source = dicom_source(data) if format == SC_FORMAT else None  # 415 dicom_required before any scoring
    analysis = await service.analyse(data, decision, policy=policy, explain=True, method=method,
                                     overlay_max_side=_overlay_side(overlay), **noted_upload(request))  # fmt: skip
    if source is not None:
        return await dicom_response(source, analysis, format)
    return _respond(service, analysis, format)


@router.get(
    "/explain/{prediction_id}",
    response_model=Explanation,
    summary="Grad-CAM overlay for a recent /predict, from the prediction store",
    responses={**error_responses(404, 422, 503), **PNG_RESPONSE},
)
async def explain_cached(
    request: Request,
    service: ServiceDep,
    decision: DecisionDep,
    prediction_id: Annotated[str, Path(max_length=64, description="prediction_id from /predict")],
    format: FormatQuery = "json",
    method: MethodQuery = DEFAULT_METHOD,
    overlay: OverlayQuery = "capped",
):
    analysis = await service.explain_cached(prediction_id, decision, method, _overlay_side(overlay))
    if analysis is None:
        raise ApiError(
            ErrorCode.PREDICTION_NOT_FOUND,
            "No recent prediction with this id: it is unknown or expired (predictions are kept for "
            f"{service.settings.cache_ttl_s:g} s, never on disk). Upload the image to POST /explain instead.",
        )
    note_stored_upload(request, analysis.image_sha256, analysis.image_bytes, analysis.prediction.image.source_format)
    return _respond(service, analysis, format)
