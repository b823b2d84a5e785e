"""The bad-input corpus (tests/hardening/corpus.py) over real HTTP to /predict and /explain.

One uvicorn subprocess for the module. Every case gets exactly its expected status: 200 with the disclaimer
for valid-but-unusual images, otherwise a JSON error with the expected code whose message names the
problem. No case may produce a 5xx, and the service must still be ready afterwards (the `server` fixture's
finaliser checks that).
"""

from __future__ import annotations

import httpx
import pytest

from pneumonia.bundle import RESEARCH_DISCLAIMER
from tests.hardening import corpus

ENDPOINTS = ("/predict", "/explain")


@pytest.fixture(scope="module")
def server(shared_server):
    """The session-wide server (tests/hardening/conftest.py); after the module's last case it must still be
    ready, alive and free of tracebacks, whatever order the cases ran in."""
    yield shared_server
    ready = httpx.get(f"{shared_server.base_url}/health/ready", timeout=60)
    assert ready.status_code == 200 and ready.json()["explain"] is True
    assert shared_server.process.poll() is None
    log = shared_server.log()
    assert "Traceback" not in log and "unhandled" not in log, log[-3000:]


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.base_url, timeout=60) as client:
        yield client


def test_the_corpus_is_big_enough():
    names = [make().name for make in corpus.CASES]
    assert len(set(names)) == len(names) >= 25


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("make", corpus.CASES, ids=[make.__name__ for make in corpus.CASES])
def test_case(client, make, endpoint):
    case = make()
    response = client.post(endpoint, **case.request_kwargs())
    expected = case.expected
    assert response.status_code < 500, (
        case.name,
        response.status_code,
        response.text[:500],
    )
    assert response.status_code == expected.status, (case.name, response.text[:500])
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["disclaimer"] == RESEARCH_DISCLAIMER
    if expected.status == 200:
        assert body["input"]["format"] in {"JPEG", "PNG", "DICOM"} and 0.0 <= body["probability"] <= 1.0
        if endpoint == "/explain":
            assert body["heatmap_format"] == "png" and len(body["heatmap"]) > 100
        return
    error = body["error"]
    assert error["code"] == expected.code, (case.name, error)
    assert expected.mention.lower() in error["message"].lower(), (
        case.name,
        error["message"],
    )
