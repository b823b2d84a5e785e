from __future__ import annotations

from fastapi import APIRouter, Request

from app.api.errors import ApiError, error_responses
from app.presenter import model_info
from app.schemas import Health
from pneumonia.errors import ErrorCode

router = APIRouter(prefix="/health", tags=["health"])


@router.get("/live", summary="Liveness: 200 while the process runs")
async def live() -> dict[str, str]:
    return {"status": "alive"}


@router.get(
    "/ready",
    response_model=Health,
    summary="Readiness: 200 once the bundle is loaded and self-tested",
    responses=error_responses(503),
)
async def ready(request: Request) -> Health:
    service = getattr(request.app.state, "service", None)
    if service is None:
        raise ApiError(ErrorCode.NOT_READY, "The model is not loaded yet.", {"Retry-After": "1"})
    return Health(status="ready", model=model_info(service), explain=service.explain_available)
