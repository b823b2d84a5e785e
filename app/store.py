"""The prediction store behind GET /explain/{id}: what /predict keeps so that a later call can explain it.

Two implementations of one small async interface (`put`, `get`):
- `MemoryStore` (default): the bounded in-process TTL cache of app/cache.py. Right for one process.
- `RedisStore` (`PNEUMONIA_CACHE_URL=redis://...`): shared by every worker and replica, so an id from one
  process is served by another.

Both keep only what an explanation needs: the decoded 8-bit grayscale pixels, their shape, the source format,
the decoder's notes and the probability, plus the upload's SHA-256 and size for the audit trail's
GET /explain/{id} lines (when an audit log is kept); never the uploaded bytes. Both bound it the same way: entries expire
after `cache_ttl_s` (Redis: the key's own expiry, PX), no entry over `cache_max_entry_bytes` is kept, and the
total is bounded by `cache_size`/`cache_max_bytes` in memory or by the Redis server's `maxmemory` (the
operator's; see docker-compose.yml, deploy/k8s/redis.yaml: no persistence, so nothing reaches a disk).

Redis being down never fails a prediction: `put` logs one line and drops the entry. `get` raises
`StoreUnavailableError`, which the API answers with 503 `store_unavailable`.
"""

from __future__ import annotations

import json
import logging
import struct
from typing import Any, Protocol

import numpy as np

from app.cache import CachedPrediction, PredictionCache
from app.config import Settings
from pneumonia.errors import ErrorCode, PneumoniaError
from pneumonia.imaging import DecodedImage

log = logging.getLogger("app.store")

KEY_PREFIX = "pneumonia:prediction:"
# A store on the request path must answer quickly or not at all: a hung Redis costs /predict at most this.
REDIS_TIMEOUT_S = 2.0
_HEADER_LENGTH = struct.Struct(">I")


class StoreUnavailableError(PneumoniaError):
    """The shared prediction store cannot be reached."""

    code = ErrorCode.STORE_UNAVAILABLE
    headers = {"Retry-After": "5"}


class PredictionStore(Protocol):
    async def put(
        self, key: str, image: DecodedImage, probability: float, input_check: dict[str, Any] | None = None, *,
        image_sha256: str | None = None, image_bytes: int | None = None,
    ) -> None:  # fmt: skip
        """Keep the prediction for the TTL; never raises (a failure is logged and the entry dropped)."""

    async def get(self, key: str) -> CachedPrediction | None:
        """The prediction, or None when unknown or expired; `StoreUnavailableError` when it cannot say."""

    async def close(self) -> None: ...


class MemoryStore:
    def __init__(self, settings: Settings):
        self.max_entry_bytes = settings.cache_max_entry_bytes
        self.cache = PredictionCache(settings.cache_size, settings.cache_ttl_s, max_bytes=settings.cache_max_bytes)

    async def put(
        self, key: str, image: DecodedImage, probability: float, input_check: dict[str, Any] | None = None, *,
        image_sha256: str | None = None, image_bytes: int | None = None,
    ) -> None:  # fmt: skip
        if image.pixels.nbytes <= self.max_entry_bytes:
            self.cache.put(key, image, probability, input_check, image_sha256=image_sha256, image_bytes=image_bytes)

    async def get(self, key: str) -> CachedPrediction | None:
        return self.cache.get(key)

    async def close(self) -> None:
        return None


def encode_entry(
    image: DecodedImage, probability: float, input_check: dict[str, Any] | None = None, *,
    image_sha256: str | None = None, image_bytes: int | None = None,
) -> bytes:  # fmt: skip
    """Header length, JSON header (shape, format, notes, probability, input check), then the raw uint8 pixels.

    A fixed, data-only format: whatever is in Redis is parsed, never unpickled. The Redis store is shared by
    processes that may run different versions during a rolling update, so the header only ever gains optional
    fields, which every reader looks up with a default: `image_sha256` and `image_bytes` (the upload's, for the
    audit trail) are written only when known, an older reader ignores them, and an entry written without them
    (by an older process) reads back with None.
    """
    pixels = np.ascontiguousarray(image.pixels, dtype=np.uint8)
    fields: dict[str, Any] = {
        "shape": list(pixels.shape),
        "format": image.source_format,
        "warnings": list(image.warnings),
        "probability": float(probability),
        "input_check": input_check or {},
    }
    if image_sha256 is not None and image_bytes is not None:
        fields.update(image_sha256=image_sha256, image_bytes=int(image_bytes))
    header = json.dumps(fields).encode()
    return _HEADER_LENGTH.pack(len(header)) + header + pixels.tobytes()


def decode_entry(blob: bytes) -> CachedPrediction:
    (length,) = _HEADER_LENGTH.unpack_from(blob)
    start = _HEADER_LENGTH.size
    header = json.loads(blob[start : start + length])
    height, width = header["shape"]
    pixels = np.frombuffer(blob, dtype=np.uint8, count=height * width, offset=start + length).reshape(height, width)
    image = DecodedImage(pixels=pixels, source_format=header["format"], warnings=tuple(header["warnings"]))
    sha256, size = header.get("image_sha256"), header.get("image_bytes")
    return CachedPrediction(
        image=image, probability=float(header["probability"]), created_at=0.0, input_check=header.get("input_check", {}),
        image_sha256=sha256 if isinstance(sha256, str) else None, image_bytes=size if isinstance(size, int) else None,
    )  # fmt: skip


class RedisStore:
    def __init__(self, url: str, settings: Settings):
        from redis.asyncio import Redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self.ttl_ms = max(1, round(settings.cache_ttl_s * 1000))
        self.max_entry_bytes = settings.cache_max_entry_bytes
        # No retries: when Redis is down every request would otherwise wait out the retry schedule first.
        self.client = Redis.from_url(
            url, socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=REDIS_TIMEOUT_S, retry=Retry(NoBackoff(), 0)
        )
        self.where = _redacted(url)

    async def put(
        self, key: str, image: DecodedImage, probability: float, input_check: dict[str, Any] | None = None, *,
        image_sha256: str | None = None, image_bytes: int | None = None,
    ) -> None:  # fmt: skip
        if image.pixels.nbytes > self.max_entry_bytes:
            return
        from redis.exceptions import RedisError

        blob = encode_entry(image, probability, input_check, image_sha256=image_sha256, image_bytes=image_bytes)
        try:
            await self.client.set(KEY_PREFIX + key, blob, px=self.ttl_ms)
        except (RedisError, OSError) as exc:
            log.warning("prediction store %s: not stored (%s: %s)", self.where, type(exc).__name__, exc)

    async def get(self, key: str) -> CachedPrediction | None:
        from redis.exceptions import RedisError

        try:
            blob = await self.client.get(KEY_PREFIX + key)
        except (RedisError, OSError) as exc:
            log.warning("prediction store %s: lookup failed (%s: %s)", self.where, type(exc).__name__, exc)
            raise StoreUnavailableError(
                "The shared prediction store is unreachable, so recent predictions cannot be looked up right now. "
                "Retry shortly, or upload the image to POST /explain instead."
            ) from exc
        if blob is None:
            return None
        assert isinstance(blob, bytes)  # the client is created without decode_responses
        return decode_entry(blob)

    async def close(self) -> None:
        await self.client.aclose()


def _redacted(url: str) -> str:
    """The URL without credentials, for log lines."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}:{parts.port or 6379}{parts.path}"


def open_store(settings: Settings) -> PredictionStore:
    if settings.cache_url:
        return RedisStore(settings.cache_url, settings)
    return MemoryStore(settings)
