"""All routes, and what each needs: the API key and rate limit are applied here, per router (app/api/auth.py).

- key + rate limit: /predict, /explain, GET /explain/{id}, /model (and /model/card, in pages.py);
- key only: /metrics (a scraper polls on its own schedule; see docs/security.md);
- open: /health/live, /health/ready, the page at /, its static files, /docs, /redoc and /openapi.json.
"""

from fastapi import APIRouter

from app.api.auth import KEY_AND_RATE_LIMIT, KEY_ONLY
from app.api.errors import error_responses
from app.api.routes import explain, health, metrics, model, pages, predict

api_router = APIRouter()
for module in (predict, explain, model):
    api_router.include_router(module.router, dependencies=KEY_AND_RATE_LIMIT, responses=error_responses(401, 429))
api_router.include_router(metrics.router, dependencies=KEY_ONLY, responses=error_responses(401))
for module in (health, pages):
    api_router.include_router(module.router)
