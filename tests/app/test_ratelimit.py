"""Rate limits (app/ratelimit.py, PNEUMONIA_RATE_LIMIT): per key or per client address, 429 with Retry-After, and
shared by every replica through a real redis-server (tests/redis_server.py) when the Redis store is configured.

The apps here are in-process (httpx over ASGI) around the session's loaded tiny bundle; the real uvicorn server
with keys and a limit is tests/integration/test_auth.py.
"""

from __future__ import annotations

import asyncio
import logging

import httpx
import pytest
import redis
from pydantic import ValidationError

from app.config import Settings
from app.keys import keys_file_line
from app.ratelimit import KEY_PREFIX, RateLimiter, parse_rate
from pneumonia.bundle import RESEARCH_DISCLAIMER

JPEG = {"content-type": "image/jpeg"}


@pytest.mark.parametrize("spec", ["120/minute", "20 per minute", "5/second", "1000/hour", "10/5 minutes", "1/day"])
def test_the_notation(spec):
    parse_rate(spec)


@pytest.mark.parametrize("spec", ["lots", "120", "-1/minute", "120/fortnight"])
def test_a_bad_limit_stops_the_settings_naming_the_variable(spec):
    with pytest.raises(ValidationError, match="rate_limit"):
        Settings(rate_limit=spec)
    assert Settings(rate_limit="").rate_limit is None  # empty: no limit (compose's "${VAR:-}")


def test_a_limit_per_identity_with_a_retry_after_that_lets_the_next_one_through():
    async def scenario() -> None:
        limiter = RateLimiter("3/second")
        verdicts = [await limiter.hit("key:alice") for _ in range(5)]
        assert [v.allowed for v in verdicts] == [True, True, True, False, False]
        assert verdicts[-1].retry_after_s == 1
        assert (await limiter.hit("key:bob")).allowed  # another key has its own budget
        await asyncio.sleep(verdicts[-1].retry_after_s + 0.05)
        assert (await limiter.hit("key:alice")).allowed  # Retry-After was honest: the window moved on

    asyncio.run(scenario())


def test_replicas_sharing_redis_share_the_limit_and_store_no_identity(redis_server):
    client = redis.Redis.from_url(redis_server.url)

    async def scenario() -> list[bool]:
        a, b = RateLimiter("4/minute", redis_server.url), RateLimiter("4/minute", redis_server.url)
        allowed = [(await (a if i % 2 else b).hit("address:10.9.8.7")).allowed for i in range(8)]
        await a.close()
        await b.close()
        return allowed

    assert asyncio.run(scenario()) == [True] * 4 + [False] * 4
    stored = [key.decode() if isinstance(key, bytes) else key for key in client.keys("*")]
    assert stored and all(key.startswith(KEY_PREFIX) for key in stored if "ratelimit" in key)
    assert not any("10.9.8.7" in key or "address" in key for key in stored), stored


def test_redis_down_falls_back_to_counting_in_process(redis_server, caplog):
    dead_url = redis_server.url.rsplit(":", 1)[0] + ":1/0"  # nothing listens on port 1

    async def scenario() -> list[bool]:
        limiter = RateLimiter("2/minute", dead_url)
        return [(await limiter.hit("key:alice")).allowed for _ in range(4)]

    with caplog.at_level(logging.WARNING, logger="app.ratelimit"):
        assert asyncio.run(scenario()) == [True, True, False, False]  # still limited, never an error
    assert caplog.text.count("rate limit store unreachable") == 1  # one line per outage, not per request


def predict_burst(app, n: int, body: bytes, *, token: str | None = None, address: str = "127.0.0.1"):
    async def burst() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app, client=(address, 50000))
        headers = {**JPEG, **({"Authorization": f"Bearer {token}"} if token else {})}
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            return [await client.post("/predict", content=body, headers=headers) for _ in range(n)]

    return asyncio.run(burst())


def assert_rate_limited(response: httpx.Response) -> None:
    assert response.status_code == 429, response.text
    body = response.json()
    assert body["error"]["code"] == "rate_limited" and body["disclaimer"] == RESEARCH_DISCLAIMER
    assert int(response.headers["Retry-After"]) >= 1


def test_without_keys_the_limit_is_per_client_address(make_app, sample_jpeg):
    app = make_app(rate_limit="3/minute")
    statuses = [r.status_code for r in predict_burst(app, 4, sample_jpeg, address="127.0.0.2")]
    assert statuses == [200, 200, 200, 429]
    assert_rate_limited(predict_burst(app, 1, sample_jpeg, address="127.0.0.2")[0])
    assert predict_burst(app, 1, sample_jpeg, address="127.0.0.3")[0].status_code == 200  # another address


def test_with_keys_the_limit_is_per_key_whatever_the_address(make_app, sample_jpeg, tmp_path):
    keys = tmp_path / "keys"
    keys.write_text(f"{keys_file_line('alice', 'tok-a')}\n{keys_file_line('bob', 'tok-b')}\n")
    app = make_app(rate_limit="2/minute", api_keys_file=keys)
    first = predict_burst(app, 2, sample_jpeg, token="tok-a", address="127.0.0.4")
    assert [r.status_code for r in first] == [200, 200]
    assert_rate_limited(predict_burst(app, 1, sample_jpeg, token="tok-a", address="127.0.0.5")[0])
    assert predict_burst(app, 1, sample_jpeg, token="tok-b", address="127.0.0.4")[0].status_code == 200
    # not counted against anyone: a request refused for its key never reaches the limiter
    assert predict_burst(app, 3, sample_jpeg, token="wrong", address="127.0.0.4")[2].status_code == 401


def test_two_apps_on_one_redis_share_the_limit(make_app, sample_jpeg, redis_server):
    apps = [make_app(rate_limit="3/minute", cache_url=redis_server.url) for _ in range(2)]

    async def alternate() -> list[int]:  # one event loop: the Redis clients' connections belong to it
        clients = [
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=("127.0.0.6", 1)), base_url="http://t")
            for app in apps
        ]
        statuses = [
            (await clients[i % 2].post("/predict", content=sample_jpeg, headers=JPEG)).status_code for i in range(5)
        ]
        for client in clients:
            await client.aclose()
        for app in apps:
            await app.state.rate_limiter.close()
        return statuses

    assert asyncio.run(alternate()) == [200, 200, 200, 429, 429]


def test_probes_the_page_and_the_docs_are_never_limited(make_app):
    app = make_app(rate_limit="1/minute")

    async def gets() -> list[int]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as c:
            return [(await c.get(path)).status_code for path in ["/health/live", "/", "/openapi.json"] * 3]

    assert set(asyncio.run(gets())) == {200}
