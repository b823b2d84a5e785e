"""The prediction store: in-memory default and the Redis one, the latter against a real redis-server."""

from __future__ import annotations

import asyncio
import json
import logging
import struct
import time
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from app.config import Settings
from app.store import (
    KEY_PREFIX,
    MemoryStore,
    RedisStore,
    StoreUnavailableError,
    decode_entry,
    encode_entry,
    open_store,
)
from pneumonia.imaging import DecodedImage
from tests.support import free_port


def image(height: int = 40, width: int = 30, seed: int = 0) -> DecodedImage:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width), dtype=np.uint8)
    return DecodedImage(pixels=pixels, source_format="DICOM", warnings=("note one", "note two"))


def settings(**overrides) -> Settings:
    return Settings(**{"cache_ttl_s": 60.0, **overrides})


def roundtrip(store, key: str, entry: DecodedImage, probability: float):
    async def go():
        try:
            await store.put(key, entry, probability)
            return await store.get(key)
        finally:
            await store.close()

    return asyncio.run(go())


def test_entry_encoding_roundtrips_pixels_shape_format_notes_and_probability():
    original = image(17, 23)
    restored = decode_entry(encode_entry(original, 0.123456789))
    assert restored.probability == 0.123456789
    assert restored.image.source_format == "DICOM" and restored.image.warnings == original.warnings
    assert restored.image.pixels.dtype == np.uint8 and restored.image.pixels.shape == (17, 23)
    np.testing.assert_array_equal(restored.image.pixels, original.pixels)


def test_entry_is_the_pixels_plus_a_small_header_not_the_upload():
    original = image(100, 80)
    blob = encode_entry(original, 0.5)
    assert len(blob) - original.pixels.nbytes < 200
    assert blob.endswith(original.pixels.tobytes())


def test_default_store_is_in_memory_and_caps_entry_size():
    store = open_store(settings(cache_max_entry_bytes=1000))
    assert isinstance(store, MemoryStore)
    assert roundtrip(store, "small", image(20, 20), 0.25).probability == 0.25
    assert roundtrip(store, "big", image(40, 40), 0.25) is None  # 1600 bytes > 1000


def test_cache_url_must_be_a_redis_url():
    assert Settings(cache_url="redis://cache:6379/0").cache_url == "redis://cache:6379/0"
    with pytest.raises(ValidationError):
        Settings(cache_url="http://cache:6379")


def redis_store(server, **overrides) -> RedisStore:
    store = open_store(settings(cache_url=server.url, **overrides))
    assert isinstance(store, RedisStore)
    return store


def test_redis_store_roundtrip_with_expiry_on_every_key(redis_server):
    original = image()
    restored = roundtrip(redis_store(redis_server), "abc", original, 0.75)
    assert restored.probability == 0.75 and restored.image.source_format == "DICOM"
    np.testing.assert_array_equal(restored.image.pixels, original.pixels)

    async def ttl_ms():
        store = redis_store(redis_server)
        try:
            return await store.client.pttl(KEY_PREFIX + "abc")
        finally:
            await store.close()

    assert 0 < asyncio.run(ttl_ms()) <= 60_000  # never a key without expiry


def test_redis_entries_expire_after_the_ttl(redis_server):
    async def go():
        store = redis_store(redis_server, cache_ttl_s=0.3)
        try:
            await store.put("short", image(), 0.1)
            assert await store.get("short") is not None
            await asyncio.sleep(0.5)
            return await store.get("short")
        finally:
            await store.close()

    assert asyncio.run(go()) is None


def test_redis_store_skips_entries_over_the_cap_and_unknown_ids(redis_server):
    assert roundtrip(redis_store(redis_server, cache_max_entry_bytes=1000), "big", image(40, 40), 0.2) is None

    async def unknown():
        store = redis_store(redis_server)
        try:
            return await store.get("no-such-id")
        finally:
            await store.close()

    assert asyncio.run(unknown()) is None


DIGEST: dict[str, Any] = {"image_sha256": "ab" * 32, "image_bytes": 12345}


def test_both_stores_keep_the_uploads_digest_and_size_for_the_audit_trail(redis_server):
    async def go(store):
        try:
            await store.put("with", image(), 0.5, {"accepted": True}, **DIGEST)
            await store.put("without", image(), 0.5)
            return await store.get("with"), await store.get("without")
        finally:
            await store.close()

    for store in (open_store(settings()), redis_store(redis_server)):
        kept, unknown = asyncio.run(go(store))
        assert (kept.image_sha256, kept.image_bytes) == (DIGEST["image_sha256"], DIGEST["image_bytes"]), store
        assert (unknown.image_sha256, unknown.image_bytes) == (None, None), store
        assert kept.input_check == {"accepted": True} and kept.probability == 0.5


def old_entry(original: DecodedImage, probability: float) -> bytes:
    """An entry as the version before the digest wrote it (a replica not yet updated, sharing the same Redis)."""
    header = json.dumps({"shape": list(original.pixels.shape), "format": original.source_format,
                         "warnings": list(original.warnings), "probability": probability, "input_check": {}}).encode()  # fmt: skip
    return struct.pack(">I", len(header)) + header + original.pixels.tobytes()


def test_the_redis_format_stays_readable_across_versions(redis_server):
    """Processes of two versions share one Redis during a rolling update: an old entry reads back without a
    digest, and a new entry's header only adds the two optional fields to the old one (an old reader, which looks
    up the others by name, reads it as before)."""
    original = image(12, 9)
    new = encode_entry(original, 0.25, **DIGEST)
    length = struct.unpack_from(">I", new)[0]
    new_header = json.loads(new[4 : 4 + length])
    old = old_entry(original, 0.25)
    old_header = json.loads(old[4 : 4 + struct.unpack_from(">I", old)[0]])
    assert {k: v for k, v in new_header.items() if k in old_header} == old_header
    assert set(new_header) - set(old_header) == set(DIGEST) and new.endswith(original.pixels.tobytes())

    async def read_old():
        store = redis_store(redis_server)
        try:
            await store.client.set(KEY_PREFIX + "old", old, px=60_000)
            return await store.get("old")
        finally:
            await store.close()

    restored = asyncio.run(read_old())
    assert (restored.image_sha256, restored.image_bytes) == (None, None) and restored.probability == 0.25
    np.testing.assert_array_equal(restored.image.pixels, original.pixels)


def test_unreachable_redis_put_fails_soft_get_raises(caplog):
    store = open_store(settings(cache_url=f"redis://:s3cret@127.0.0.1:{free_port()}/0"))  # nothing listens

    async def go():
        try:
            started = time.perf_counter()
            await store.put("x", image(), 0.5)  # must not raise
            put_s = time.perf_counter() - started
            with pytest.raises(StoreUnavailableError, match="unreachable"):
                await store.get("x")
            return put_s
        finally:
            await store.close()

    with caplog.at_level(logging.WARNING, logger="app.store"):
        put_s = asyncio.run(go())
    assert put_s < 1.0  # connection refused: no retry schedule
    messages = [r.getMessage() for r in caplog.records]
    assert any("not stored" in m for m in messages) and any("lookup failed" in m for m in messages)
    assert not any("s3cret" in m for m in messages)  # the URL's password never reaches the log
