"""JSON errors: `{"error": {"code", "message"}, "disclaimer"}` for every failure a client can cause."""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.bundle import RESEARCH_DISCLAIMER
from app.exceptions import ServiceError
from app.service import NotAChestXrayError

log = logging.getLogger("app.errors")


class ApiError(ServiceError):
    """A request error raised by the API layer itself, with its status and code given at the raise."""

    def __init__(self, status_code: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status_code = status_code
        self.code = code
        self.headers = headers


class UploadTooLargeError(ApiError):
    def __init__(self, limit: int):
        super().__init__(
            413, "upload_too_large", f"The upload exceeds the limit of {limit:,} bytes ({limit / 1048576:.1f} MiB)."
        )


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, **extra}, "disclaimer": RESEARCH_DISCLAIMER}


def error_response(
    status_code: int, code: str, message: str, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    return JSONResponse(error_body(code, message, **extra), status_code=status_code, headers=headers)


ERROR_SCHEMA = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
            "required": ["code", "message"],
        },
        "disclaimer": {"type": "string"},
    },
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    descriptions = {
        400: "Bad request (empty file, two files, malformed multipart body)",
        404: "Unknown or expired prediction id",
        413: "Upload or image too large",
        415: "Neither multipart/form-data nor a raw image/jpeg, image/png or application/dicom body, or not a "
        "JPEG/PNG/DICOM image",
        422: "Invalid parameters or an unusable image",
        503: "Model not ready, explanations unavailable, the shared prediction store unreachable, or the service "
        "is busy (see Retry-After)",
    }
    return {
        s: {"description": descriptions[s], "content": {"application/json": {"schema": ERROR_SCHEMA}}} for s in statuses
    }


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("query", "path", "body"))
        parts.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
    return "Invalid request: " + "; ".join(parts)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(NotAChestXrayError)
    async def _not_a_chest_xray(request: Request, exc: NotAChestXrayError) -> JSONResponse:
        body = error_body(exc.code, exc.message, reasons=exc.check.reasons)
        return JSONResponse({**body, "input_check": asdict(exc.check)}, status_code=exc.status_code)

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
        return error_response(exc.status_code, exc.code, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, "invalid_request", _validation_message(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled %s on %s %s", type(exc).__name__, request.method, request.url.path, exc_info=exc)
        return error_response(500, "internal_error", "An unexpected error occurred; it has been logged.")
