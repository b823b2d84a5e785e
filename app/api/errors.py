"""JSON errors: `{"error": {"code", "message"}, "disclaimer"}` for every failure a client can cause."""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from pneumonia.bundle import RESEARCH_DISCLAIMER
from pneumonia.errors import ErrorCode, PneumoniaError
from pneumonia.model import ImageRefusedError

log = logging.getLogger("app.errors")


class ApiError(PneumoniaError):
    """A request error raised by the API layer itself, with its code (and so its status) given at the raise."""

    def __init__(self, code: ErrorCode, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.code = code
        self.headers = headers


class UploadTooLargeError(ApiError):
    def __init__(self, limit: int):
        super().__init__(
            ErrorCode.UPLOAD_TOO_LARGE,
            f"The upload exceeds the limit of {limit:,} bytes ({limit / 1048576:.1f} MiB).",
        )


def error_body(code: ErrorCode, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": {"code": code.value, "message": message, **extra}, "disclaimer": RESEARCH_DISCLAIMER}


def error_response(
    code: ErrorCode,
    message: str,
    headers: dict[str, str] | None = None,
    *,
    status_code: int | None = None,
    **extra: Any,
) -> JSONResponse:
    """The envelope for `code`; `status_code` overrides the code's own status only for HTTP errors passed through."""
    return JSONResponse(error_body(code, message, **extra), status_code=status_code or code.status, headers=headers)


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
        400: "Bad request (empty file, two files, malformed multipart body, a credential in the query string)",
        401: "No API key, or one that is not accepted: send 'Authorization: Bearer TOKEN' (code unauthorized)",
        404: "Unknown or expired prediction id",
        413: "Upload or image too large",
        415: "Neither multipart/form-data nor a raw body of a media type the request body lists, or not a "
        "JPEG/PNG/DICOM image",
        422: "Invalid parameters or an unusable image",
        429: "Past the rate limit for this key or address (code rate_limited); retry after Retry-After seconds",
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
    @app.exception_handler(ImageRefusedError)
    async def _refused(request: Request, exc: ImageRefusedError) -> JSONResponse:
        body = error_body(exc.code, exc.message, reasons=exc.check.reasons)
        return JSONResponse({**body, "input_check": asdict(exc.check)}, status_code=exc.status_code)

    @app.exception_handler(PneumoniaError)
    async def _service_error(request: Request, exc: PneumoniaError) -> JSONResponse:
        return error_response(exc.code, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(ErrorCode.INVALID_REQUEST, _validation_message(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: ErrorCode.NOT_FOUND, 405: ErrorCode.METHOD_NOT_ALLOWED}.get(
            exc.status_code, ErrorCode.INVALID_REQUEST
        )
        return error_response(code, str(exc.detail), getattr(exc, "headers", None), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled %s on %s %s", type(exc).__name__, request.method, request.url.path, exc_info=exc)
        return error_response(ErrorCode.INTERNAL_ERROR, "An unexpected error occurred; it has been logged.")
