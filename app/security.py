"""Access control, rate limit and audit trail, wired into the app: what `create_app` and its lifespan call.

- `install(app, settings)` at app creation: the key ring (read lazily, so even an app whose lifespan never
  runs checks keys), the rate limiter, no audit log yet. Auth is never fail-open: with
  `PNEUMONIA_API_KEYS_FILE` set, every protected route needs a key from the start.
- `start(app, settings)` first in the lifespan, before the model loads: the keys file read strictly, the
  start-up rule for a service without keys (app/bind.py), the audit log opened. Any failure raises, and the
  lifespan logs it as `refusing to start: ...`.
- `stop(app)` at shutdown.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import unquote_plus

from fastapi import FastAPI

from app.audit import AuditLog
from app.bind import StartupRefusedError, check_anonymous_exposure
from app.config import Settings
from app.keys import KeyRing, KeysFileError
from app.ratelimit import RateLimiter

log = logging.getLogger("app.security")

# What `start` raises for a configuration that must not be served.
STARTUP_ERRORS = (KeysFileError, StartupRefusedError, OSError)


def install(app: FastAPI, settings: Settings) -> None:
    redact_credentials_in_uvicorn_access_log()
    app.state.keyring = KeyRing(settings.api_keys_file) if settings.api_keys_file else None
    app.state.rate_limiter = RateLimiter(settings.rate_limit, settings.cache_url) if settings.rate_limit else None
    app.state.audit = None
    if app.state.keyring is None:
        _declare_key_optional(app)


def _declare_key_optional(app: FastAPI) -> None:
    """Without keys the schema says so: every operation's security gains `{}` (OpenAPI: no credentials is
    also accepted), so clients and schema checkers see the deployment as it is; /docs keeps Authorize."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            for operations in schema.get("paths", {}).values():
                for operation in operations.values():
                    if isinstance(operation, dict) and operation.get("security") and {} not in operation["security"]:
                        operation["security"].append({})
        return app.openapi_schema or generate()

    app.openapi = openapi  # type: ignore[method-assign]


def start(app: FastAPI, settings: Settings) -> None:
    keyring: KeyRing | None = app.state.keyring
    if keyring is not None:
        keyring.load()
    check_anonymous_exposure(has_keys=keyring is not None, allow_anonymous=settings.allow_anonymous)
    limiter: RateLimiter | None = app.state.rate_limiter
    if limiter is not None:
        log.info("rate limit: %s per %s, counted in %s", limiter.spec, "key" if keyring else "address", limiter.where)
    if settings.audit_log:
        try:
            app.state.audit = AuditLog.open(settings.audit_log)
        except OSError as exc:
            raise OSError(f"the audit log {settings.audit_log} cannot be opened for appending: {exc}") from exc
        log.info("audit trail: one JSON line per scoring request, appended to %s", settings.audit_log)


async def stop(app: FastAPI) -> None:
    audit: AuditLog | None = app.state.audit
    if audit is not None:
        audit.close()
        app.state.audit = None
    limiter: RateLimiter | None = app.state.rate_limiter
    if limiter is not None:
        await limiter.close()


class _RedactQueryCredentials(logging.Filter):
    """uvicorn's access log writes each request's path with its query string: a token a client put in the URL
    (refused with 400 token_in_query) would be written into the log. Its value is replaced with `REDACTED`."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str) and "?" in args[2]:
            path, _, query = args[2].partition("?")
            record.args = (*args[:2], f"{path}?{redact_query(query)}", *args[3:])
        return True


def redact_query(query: str) -> str:
    from app.api.auth import QUERY_TOKEN_NAMES

    parts = []
    for part in query.split("&"):
        name, sep, _ = part.partition("=")
        credential = unquote_plus(name).lower().replace("-", "_") in QUERY_TOKEN_NAMES
        parts.append(f"{name}{sep}REDACTED" if credential else part)
    return "&".join(parts)


def redact_credentials_in_uvicorn_access_log() -> None:
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, _RedactQueryCredentials) for f in access.filters):
        access.addFilter(_RedactQueryCredentials())
