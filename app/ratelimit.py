"""Rate limits per API key (or per client address without keys): `PNEUMONIA_RATE_LIMIT=120/minute`.

Built on `limits` (the library behind slowapi and Flask-Limiter): it parses the `N/period` notation, and its
moving-window strategy runs atomically in Redis (one Lua script per hit) or in process memory. A moving
window allows at most N requests in any period-long window: no double burst at a fixed window's boundary,
and an exact Retry-After (when the oldest request in the window leaves it). It keeps up to N timestamps per
active key, each expiring with the window. With the Redis store configured (`PNEUMONIA_CACHE_URL`), they live
in that Redis, so the limit is shared by every worker and replica; without it, each process counts for itself.

Redis down or hung never fails a request: the limiter falls back to its in-process counters for
`FALLBACK_S`, logging one line per outage, then tries Redis again. Counter keys hold a digest of the key id
or client address, not the address itself.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

from limits import RateLimitItem, parse
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.errors import StorageError

log = logging.getLogger("app.ratelimit")

KEY_PREFIX = "pneumonia:ratelimit"
REDIS_TIMEOUT_S = 1.0  # on the request path: a hung Redis costs a request at most this, once per outage
FALLBACK_S = 30.0


def parse_rate(spec: str) -> RateLimitItem:
    """`120/minute`, `20 per minute`, `5/second`, `1000/hour`, `10/5 minutes` -> a limit (ValueError if not)."""
    try:
        return parse(spec)
    except ValueError as exc:
        raise ValueError(
            f"invalid rate limit {spec!r}: write it as N/second, N/minute, N/hour or N/day (e.g. 120/minute)"
        ) from exc


def _limits_url(cache_url: str) -> str:
    """redis://, rediss://, unix:// (the store's URL forms) -> the `limits` async storage URL."""
    if cache_url.startswith("unix://"):
        return "async+redis+unix://" + cache_url.removeprefix("unix://")
    return "async+" + cache_url


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    retry_after_s: int = 0  # whole seconds until a request would be allowed again (>= 1 when refused)


class RateLimiter:
    def __init__(self, spec: str, redis_url: str | None = None):
        self.item = parse_rate(spec)
        self.spec = spec
        self.local = MovingWindowRateLimiter(MemoryStorage())
        self.shared: MovingWindowRateLimiter | None = None
        self._storage: Storage | None = None
        self._fallback_until = 0.0
        if redis_url:
            from redis.backoff import NoBackoff
            from redis.retry import Retry

            options: dict[str, Any] = {
                "socket_timeout": REDIS_TIMEOUT_S,
                "socket_connect_timeout": REDIS_TIMEOUT_S,
                "retry": Retry(NoBackoff(), 0),  # no retry schedule on the request path
            }
            self._storage = RedisStorage(
                _limits_url(redis_url), implementation="redispy", wrap_exceptions=True, key_prefix=KEY_PREFIX, **options
            )
            self.shared = MovingWindowRateLimiter(self._storage)

    @property
    def where(self) -> str:
        return "redis (shared by every replica)" if self.shared is not None else "this process"

    async def hit(self, identity: str) -> Verdict:
        """Count one request for `identity` (a key id or client address) and say whether it may proceed."""
        key = hashlib.sha256(identity.encode("utf-8")).hexdigest()[:32]
        limiter = self.local
        if self.shared is not None and time.monotonic() >= self._fallback_until:
            try:
                return await self._hit(self.shared, key)
            except StorageError as exc:
                self._fallback_until = time.monotonic() + FALLBACK_S
                log.warning(
                    "rate limit store unreachable (%s); counting in this process for the next %.0f s",
                    type(exc.storage_error).__name__,
                    FALLBACK_S,
                )
        return await self._hit(limiter, key)

    async def _hit(self, limiter: MovingWindowRateLimiter, key: str) -> Verdict:
        if await limiter.hit(self.item, key):  # one atomic round trip; a refused hit is not counted
            return Verdict(True)
        stats = await limiter.get_window_stats(self.item, key)  # reset: when the oldest request leaves the window
        return Verdict(False, max(1, math.ceil(stats.reset_time - time.time())))

    async def close(self) -> None:
        bridge = getattr(self._storage, "bridge", None)
        client = getattr(bridge, "storage", None)
        if client is not None and hasattr(client, "aclose"):
            await client.aclose()
