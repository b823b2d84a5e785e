"""Who may call: API keys (Bearer tokens) and the rate limit, as FastAPI dependencies.

`Authorized` (an `Annotated` dependency) identifies the caller from `Authorization: Bearer TOKEN` through
FastAPI's `HTTPBearer` security scheme, so /docs shows the Authorize button; `RateLimited` adds the rate
limit on top. app/api/main.py puts them in front of the routers that need a key. Every refusal is a
`PneumoniaError`, answered in the service's JSON envelope:

- no key, a wrong key, an empty `Bearer`, another scheme: 401 `unauthorized` with `WWW-Authenticate: Bearer`
  (the message never repeats what was sent);
- a token in the query string (`?token=`, `?access_token=`, `?api_key=`, ...): 400 `token_in_query`, keys or
  not, since URLs end up in access logs, proxies and browser history;
- past `PNEUMONIA_RATE_LIMIT`: 429 `rate_limited` with `Retry-After`;
- no keys configured, not `PNEUMONIA_ALLOW_ANONYMOUS`, and the connection did not arrive on loopback:
  403 `anonymous_not_allowed` (app/bind.py; normally start-up already refused).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.api.audit import audit_record
from app.api.errors import ApiError
from app.bind import anonymous_refused
from app.keys import MAX_TOKEN_BYTES, KeyRing
from app.ratelimit import RateLimiter
from pneumonia.errors import ErrorCode

log = logging.getLogger("app.auth")

# Query parameters that carry credentials in other APIs; compared case-insensitively, '-' as '_'.
QUERY_TOKEN_NAMES = frozenset(
    {"token", "access_token", "api_key", "apikey", "key", "bearer", "auth", "authorization", "id_token", "jwt"}
)


class AccessError(ApiError):
    """Refused before the request's work starts: no or wrong key, a credential in the query, over the limit."""


class UnauthorizedError(AccessError):
    def __init__(self, message: str):
        super().__init__(ErrorCode.UNAUTHORIZED, message, {"WWW-Authenticate": "Bearer"})


MISSING_KEY = "This service needs an API key: send it as the header 'Authorization: Bearer TOKEN'."
WRONG_KEY = "The API key was not accepted."

bearer_scheme = HTTPBearer(
    auto_error=False,
    scheme_name="APIKey",
    bearerFormat="opaque token",
    description="An API key from the service's operator (`python -m app.keys new KEY_ID`), sent as "
    "`Authorization: Bearer TOKEN`. Needed by /predict, /explain, /model, /model/card and /metrics when the "
    "service has keys configured (PNEUMONIA_API_KEYS_FILE); never put it in the URL.",
)


@dataclass(frozen=True)
class Caller:
    key_id: str | None  # None: anonymous (no keys configured)
    address: str | None  # the client address (for the per-address rate limit without keys)

    @property
    def identity(self) -> str:
        return f"key:{self.key_id}" if self.key_id is not None else f"address:{self.address}"


def refuse_query_token(request: Request) -> None:
    for name in request.query_params:
        if name.lower().replace("-", "_") in QUERY_TOKEN_NAMES:
            raise AccessError(
                ErrorCode.TOKEN_IN_QUERY,
                f"Credentials are not accepted in the URL (query parameter {name[:32]!r}): URLs end up in logs "
                "and browser history. Send the key as the header 'Authorization: Bearer TOKEN', and replace it "
                "if it was a real one.",
            )


async def authorize(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
) -> Caller:
    refuse_query_token(request)
    client = request.client.host if request.client else None
    keyring: KeyRing | None = getattr(request.app.state, "keyring", None)
    if keyring is None:
        settings = request.app.state.settings
        if not settings.allow_anonymous and anonymous_refused(request.scope.get("server")):
            raise AccessError(
                ErrorCode.ANONYMOUS_NOT_ALLOWED,
                "This service has no API keys configured, so it answers anonymous requests from this machine "
                "(loopback) only. Its operator can configure keys (PNEUMONIA_API_KEYS_FILE).",
            )
        return Caller(None, client)
    if credentials is None:
        raise UnauthorizedError(MISSING_KEY)
    # Starlette decodes header bytes as latin-1: encoding back gives the bytes exactly as sent.
    token = credentials.credentials.encode("latin-1")
    key_id = keyring.identify(token) if len(token) <= MAX_TOKEN_BYTES else None
    if key_id is None:
        raise UnauthorizedError(WRONG_KEY)
    record = audit_record(request)
    if record is not None:
        record.key_id = key_id
    return Caller(key_id, client)


Authorized = Annotated[Caller, Depends(authorize)]


async def rate_limit(request: Request, caller: Authorized) -> Caller:
    limiter: RateLimiter | None = getattr(request.app.state, "rate_limiter", None)
    if limiter is not None:
        verdict = await limiter.hit(caller.identity)
        if not verdict.allowed:
            raise AccessError(
                ErrorCode.RATE_LIMITED,
                f"Too many requests for this {'key' if caller.key_id else 'address'}: the limit is "
                f"{limiter.spec}. Retry after {verdict.retry_after_s} s.",
                {"Retry-After": str(verdict.retry_after_s)},
            )
    return caller


RateLimited = Annotated[Caller, Depends(rate_limit)]

# For routers and routes: `dependencies=KEY_AND_RATE_LIMIT` (scoring, model) or `KEY_ONLY` (/metrics).
KEY_AND_RATE_LIMIT = [Depends(rate_limit)]
KEY_ONLY = [Depends(authorize)]
