"""Dependencies as `Annotated` aliases (FastAPI full-stack template style).

They are `async def` on purpose: none of them blocks, and FastAPI runs every plain `def` dependency in
the thread pool, a thread round trip per dependency per request (py-spy on /predict: ~13% of the event
loop's busy time went to `run_in_threadpool` for these; bench/).
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import Depends, Query, Request

from app.api.errors import ApiError
from app.config import Settings
from app.metrics import Metrics
from app.service import ModelService
from pneumonia.errors import ErrorCode
from pneumonia.input_check import POLICIES, Policy
from pneumonia.labels import Decision, resolve_decision


async def get_app_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


async def get_service(request: Request) -> ModelService:
    service = getattr(request.app.state, "service", None)
    if service is None:
        raise ApiError(ErrorCode.NOT_READY, "The model is still loading; retry shortly.", {"Retry-After": "1"})
    return service


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
ServiceDep = Annotated[ModelService, Depends(get_service)]


async def get_decision(
    service: ServiceDep,
    operating_point: Annotated[
        str | None, Query(description="Named operating point from GET /model (default: the model's default)")
    ] = None,
    threshold: Annotated[
        float | None, Query(ge=0.0, le=1.0, description="Custom decision threshold; excludes operating_point")
    ] = None,
) -> Decision:
    return resolve_decision(service.metadata, operating_point, threshold)


DecisionDep = Annotated[Decision, Depends(get_decision)]


async def get_input_check_policy(
    settings: SettingsDep,
    input_check: Annotated[
        Literal[POLICIES] | None,  # type: ignore[valid-type]
        Query(
            description="Input check policy for this request (default: PNEUMONIA_INPUT_CHECK, normally refuse): "
            "refuse answers 422 with the refusal's code (not_a_chest_xray, outside_population or "
            "poor_image_quality) and its reasons; warn answers "
            "with accepted=false and the reasons in warnings; off skips the check"
        ),
    ] = None,
) -> Policy:
    return input_check or settings.input_check


PolicyDep = Annotated[Policy, Depends(get_input_check_policy)]
