"""What a person opens in a browser: the page at `/`, the API docs at `/docs` and `/redoc`, the model card.

Everything these pages load is served by this service from app/static (the docs' Swagger UI and ReDoc are
vendored there, see app/static/vendor/README.md), so they work on a machine without internet access. A
Content-Security-Policy tells the browser to refuse anything else, so a stray external reference fails
loudly in the browser tests instead of silently calling out.
"""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, PlainTextResponse
from fastapi.staticfiles import StaticFiles

from app.api.auth import KEY_AND_RATE_LIMIT
from app.api.errors import ApiError, error_responses
from pneumonia.bundle import MODEL_CARD_FILENAME
from pneumonia.errors import ErrorCode

STATIC_DIR = Path(__file__).resolve().parents[2] / "static"
STATIC_URL = "/static"
VENDOR_URL = f"{STATIC_URL}/vendor"

# The page's own script and stylesheet are files: no inline code, nothing from elsewhere. Images also come
# from blob: (the uploaded file, shown without sending it anywhere else) and data: (the returned overlay).
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
# FastAPI's docs pages start Swagger UI with an inline script, and both UIs set inline styles; ReDoc runs
# its search index in a blob: worker. Still nothing but this service.
DOCS_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; worker-src 'self' blob:; base-uri 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {"Referrer-Policy": "no-referrer", "X-Content-Type-Options": "nosniff"}

router = APIRouter()
R = TypeVar("R", bound=Response)


def mount_static(app: FastAPI) -> None:
    """Serve app/static at /static (the page's script and styles, the vendored docs assets)."""
    app.mount(STATIC_URL, StaticFiles(directory=STATIC_DIR), name="static")


def _with_csp(response: R, policy: str) -> R:
    response.headers.update({"Content-Security-Policy": policy, **SECURITY_HEADERS})
    return response


@router.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
async def index() -> FileResponse:
    return _with_csp(FileResponse(STATIC_DIR / "index.html", media_type="text/html"), PAGE_CSP)


@router.get("/docs", include_in_schema=False)
async def swagger_ui(request: Request) -> HTMLResponse:
    html = get_swagger_ui_html(
        openapi_url=request.app.openapi_url,
        title=f"{request.app.title} - Swagger UI",
        swagger_js_url=f"{VENDOR_URL}/swagger-ui/swagger-ui-bundle.js",
        swagger_css_url=f"{VENDOR_URL}/swagger-ui/swagger-ui.css",
        swagger_favicon_url=f"{STATIC_URL}/favicon.png",
        # Swagger UI would otherwise send the schema to its public validator service for a badge
        swagger_ui_parameters={"validatorUrl": None},
    )
    return _with_csp(html, DOCS_CSP)


@router.get("/redoc", include_in_schema=False)
async def redoc(request: Request) -> HTMLResponse:
    html = get_redoc_html(
        openapi_url=request.app.openapi_url,
        title=f"{request.app.title} - ReDoc",
        redoc_js_url=f"{VENDOR_URL}/redoc/redoc.standalone.js",
        redoc_favicon_url=f"{STATIC_URL}/favicon.png",
        with_google_fonts=False,
    )
    return _with_csp(html, DOCS_CSP)


@router.get(
    "/model/card",
    tags=["model"],
    summary="The served bundle's human-readable model card (Markdown)",
    response_class=Response,
    dependencies=KEY_AND_RATE_LIMIT,  # like GET /model (app/api/main.py); the page and docs stay open
    responses={
        **error_responses(401, 429),
        200: {
            "description": "MODEL_CARD.md of the served bundle",
            "content": {"text/markdown": {"schema": {"type": "string"}}},
        },
        404: {**error_responses(404)[404], "description": f"The served bundle has no {MODEL_CARD_FILENAME}"},
    },
)
async def model_card(request: Request) -> PlainTextResponse:
    path = Path(request.app.state.settings.model_dir) / MODEL_CARD_FILENAME
    if not path.is_file():
        raise ApiError(
            ErrorCode.MODEL_CARD_NOT_FOUND, f"The served bundle has no {MODEL_CARD_FILENAME}; see GET /model."
        )
    return PlainTextResponse(path.read_text(encoding="utf-8"), media_type="text/markdown; charset=utf-8")
