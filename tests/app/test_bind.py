"""The start-up rule for a service without API keys (app/bind.py): loopback only, unless allowed on purpose.

How the service knows where uvicorn will listen (uvicorn's own parser over its argv and UVICORN_* variables),
which addresses count as loopback, and the request-time backstop for a listener start-up could not see. The
real processes: tests/integration/test_auth.py (`test_start_up_refuses_...`).
"""

from __future__ import annotations

import asyncio

import httpx
import pytest

from app.bind import Bind, StartupRefusedError, check_anonymous_exposure, is_loopback_host, uvicorn_bind

UVICORN = "/srv/venv/bin/uvicorn"
PYTHON_M_UVICORN = "/usr/lib/python3.11/site-packages/uvicorn/__main__.py"


@pytest.fixture(autouse=True)
def no_uvicorn_env(monkeypatch):
    for name in ("UVICORN_HOST", "UVICORN_UDS", "UVICORN_FD"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("program", [UVICORN, PYTHON_M_UVICORN])
def test_the_host_is_read_as_uvicorn_reads_it(program, monkeypatch):
    assert uvicorn_bind([program, "app.main:app"]).host == "127.0.0.1"  # uvicorn's default
    assert uvicorn_bind([program, "app.main:app", "--host", "0.0.0.0", "--port", "8000"]).host == "0.0.0.0"
    assert uvicorn_bind([program, "app.main:app", "--host=::"]).host == "::"
    assert uvicorn_bind([program, "app.main:app", "--uds", "/run/app.sock"]).local is True
    assert uvicorn_bind([program, "app.main:app", "--fd", "3"]).local is None
    monkeypatch.setenv("UVICORN_HOST", "0.0.0.0")  # the Dockerfile's way
    assert uvicorn_bind([program, "app.main:app", "--no-access-log"]).host == "0.0.0.0"
    assert uvicorn_bind([program, "app.main:app", "--host", "127.0.0.1"]).host == "127.0.0.1"  # the flag wins


def test_another_server_or_an_embedding_program_is_unknown():
    assert uvicorn_bind(["/usr/bin/gunicorn", "-k", "uvicorn.workers.UvicornWorker", "-b", "0.0.0.0:80"]).local is None
    assert uvicorn_bind(["/usr/bin/python", "-m", "pytest"]).local is None


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost", "::ffff:127.0.0.1"])
def test_loopback_hosts(host):
    assert is_loopback_host(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "192.168.0.7", "fe80::1", "", "no-such-host.invalid"])
def test_hosts_that_are_not_loopback(host):
    assert not is_loopback_host(host)


def test_without_keys_a_non_loopback_host_refuses_to_start_naming_the_ways_out():
    with pytest.raises(StartupRefusedError) as refused:
        check_anonymous_exposure(has_keys=False, allow_anonymous=False, bind=Bind("0.0.0.0", how="uvicorn --host"))
    message = str(refused.value)
    assert "0.0.0.0" in message and "not loopback" in message
    assert "PNEUMONIA_API_KEYS_FILE" in message and "PNEUMONIA_ALLOW_ANONYMOUS=true" in message


def test_keys_loopback_or_the_explicit_flag_may_start(caplog):
    public = Bind("0.0.0.0", how="uvicorn --host")
    check_anonymous_exposure(has_keys=True, allow_anonymous=False, bind=public)
    check_anonymous_exposure(has_keys=False, allow_anonymous=False, bind=Bind("127.0.0.1"))
    check_anonymous_exposure(has_keys=False, allow_anonymous=False, bind=Bind(uds="/run/app.sock"))
    check_anonymous_exposure(has_keys=False, allow_anonymous=False, bind=Bind())  # unknown: the backstop
    assert "only on loopback connections" in caplog.text
    check_anonymous_exposure(has_keys=False, allow_anonymous=True, bind=public)
    assert "PNEUMONIA_ALLOW_ANONYMOUS=true" in caplog.text


def test_the_backstop_refuses_anonymous_requests_that_did_not_arrive_on_loopback(make_app, sample_jpeg):
    """A listener start-up could not see (gunicorn, --fd): the socket address of each request decides."""

    async def exchange(app, base_url: str) -> tuple[httpx.Response, int]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base_url) as client:
            predicted = await client.post("/predict", content=sample_jpeg, headers={"content-type": "image/jpeg"})
            return predicted, (await client.get("/health/live")).status_code

    for base_url, allow, expected in (
        ("http://10.20.30.40:8000", False, 403),
        ("http://127.0.0.1:8000", False, 200),
        ("http://[::1]:8000", False, 200),
        ("http://10.20.30.40:8000", True, 200),
    ):
        response, live = asyncio.run(exchange(make_app(allow_anonymous=allow), base_url))
        assert response.status_code == expected, (base_url, allow, response.text)
        if expected == 403:
            assert response.json()["error"]["code"] == "anonymous_not_allowed"
        assert live == 200  # probes stay open
