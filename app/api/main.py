from fastapi import APIRouter

from app.api.routes import explain, health, metrics, model, pages, predict

api_router = APIRouter()
for module in (predict, explain, health, model, metrics, pages):
    api_router.include_router(module.router)
