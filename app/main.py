"""FastAPI app factory. `app = create_app()` does not load the model; the lifespan handler does.

Run: `uvicorn app.main:app` (bundle from PNEUMONIA_MODEL_DIR). A bundle that is missing, invalid, tampered
with (checksum mismatch) or fails the self-test stops start-up with a non-zero exit; the service never
reports ready with a half-working model.
"""

from __future__ import annotations

import logging
import re
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from anyio import to_thread
from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import security
from app.api.audit import AuditMiddleware
from app.api.errors import install_error_handlers
from app.api.main import api_router
from app.api.routes.pages import mount_static
from app.api.uploads import UploadLimitMiddleware
from app.config import Settings, get_settings
from app.metrics import Metrics
from app.service import load_service
from pneumonia import __version__
from pneumonia.bundle import RESEARCH_DISCLAIMER, BundleError

log = logging.getLogger("app")
access_log = logging.getLogger("app.access")
REQUEST_ID_HEADER = "X-Request-ID"
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")

DESCRIPTION = f"""
**{RESEARCH_DISCLAIMER}**

Upload a chest X-ray (JPEG, PNG or DICOM) to `POST /predict` for the model's probability of pneumonia, or
to `POST /explain` for the same plus a Grad-CAM overlay. `GET /model` describes the model, its validation
and its limitations. Uploads are processed in memory and never stored.
"""


def _configure_logging(level: str) -> None:
    """The service's log and the library's (bundle verification, self-test, degraded modes) on stderr."""
    for logger in (log, logging.getLogger("pneumonia")):
        if not logger.handlers:
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
            logger.addHandler(handler)
        logger.setLevel(level)
    # The service's own lines go to its handler only; the library's also reach the root logger, where an
    # embedding program (or a test's log capture) listens: uvicorn configures no root handler, so no line doubles.
    log.propagate = False


class RequestContextMiddleware:
    """Request id header, access log (method, path, status, duration only) and HTTP metrics."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope.get("headers", ())).get(REQUEST_ID_HEADER.lower().encode(), b"").decode("latin-1")
        request_id = incoming if _SAFE_REQUEST_ID.match(incoming) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id  # for the audit trail (app/api/audit.py)
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((REQUEST_ID_HEADER.lower().encode(), request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            self.metrics.in_flight.dec()
            duration = time.perf_counter() - started
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope["method"]
            self.metrics.requests.labels(route=template, method=method, status=str(status)).inc()
            self.metrics.latency.labels(route=template, method=method).observe(duration)
            access_log.info(
                "%s %s %d %.1fms request_id=%s", method, scope.get("path", ""), status, duration * 1000, request_id
            )


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    _configure_logging(settings.log_level)
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:  # keys, the rule for a service without keys, the audit log: before the slow model load
            security.start(app, settings)
        except security.STARTUP_ERRORS as exc:
            log.critical("refusing to start: %s", exc)
            raise
        log.info("loading model bundle from %s", settings.model_dir)
        try:
            service = await to_thread.run_sync(
                lambda: load_service(
                    settings, observe_inference=metrics.observe_inference, on_reject=metrics.rejected.inc
                )
            )
        except BundleError as exc:
            log.critical("refusing to start: %s", exc)
            raise
        app.state.service = service
        meta = service.metadata
        log.info("ready: %s %s (%s), explain=%s", meta.name, meta.version, meta.backbone, service.explain_available)
        try:
            yield
        finally:
            app.state.service = None
            await service.cache.close()
            await security.stop(app)

    app = FastAPI(
        title="Pneumonia screening API — RESEARCH USE ONLY",
        description=DESCRIPTION,
        version=__version__,
        lifespan=lifespan,
        # self-hosted in app.api.routes.pages: FastAPI's own pages load Swagger UI/ReDoc from a CDN
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.service = None
    security.install(app, settings)  # API keys, rate limit (app/api/auth.py), audit trail (app/api/audit.py)
    install_error_handlers(app)
    app.include_router(api_router)
    mount_static(app)
    app.add_middleware(UploadLimitMiddleware, max_bytes=settings.max_upload_bytes)
    app.add_middleware(AuditMiddleware)  # inside the request id, outside the upload limit: sees its 413s
    app.add_middleware(RequestContextMiddleware, metrics=metrics)  # outermost: sees every response, 413s too
    return app


app = create_app()
