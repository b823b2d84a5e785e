from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import ServiceDep
from app.api.errors import error_responses
from app.schemas import ModelCard

router = APIRouter(tags=["model"])


@router.get(
    "/model",
    response_model=ModelCard,
    summary="What the served model is, how it was validated, its limits",
    responses=error_responses(503),
)
async def model(service: ServiceDep) -> ModelCard:
    explainer = service.model.explainer
    explanations = explainer.description if explainer is not None else None
    return ModelCard.from_metadata(service.metadata, service.explain_available, explanations)
