"""Two uvicorn processes on two ports sharing one real redis-server (PNEUMONIA_CACHE_URL).

An id from /predict on A is explained by GET /explain/{id} on B; with Redis killed or hung, /predict still
answers 200 and GET /explain/{id} answers 503 `store_unavailable` (never 500); once Redis is back, sharing
works again.
"""

from __future__ import annotations

import time

import httpx
import pytest

from app.store import REDIS_TIMEOUT_S
from pneumonia.bundle import RESEARCH_DISCLAIMER
from tests.support import copy_bundle


@pytest.fixture(scope="module")
def replicas(start_server, tiny_bundle, tmp_path_factory, redis_server):
    bundle = copy_bundle(tiny_bundle, tmp_path_factory.mktemp("bundle") / "bundle")
    servers = [start_server(bundle, PNEUMONIA_CACHE_URL=redis_server.url) for _ in range(2)]
    clients = [httpx.Client(base_url=s.base_url, timeout=60) for s in servers]
    yield servers, clients
    for client in clients:
        client.close()


def predict(client: httpx.Client, data: bytes) -> dict:
    response = client.post("/predict", content=data, headers={"content-type": "image/jpeg"})
    assert response.status_code == 200, response.text
    return response.json()


def assert_shared(clients, data: bytes) -> None:
    a, b = clients
    predicted = predict(a, data)
    explained = b.get(f"/explain/{predicted['prediction_id']}")
    assert explained.status_code == 200, explained.text
    body = explained.json()
    assert body["prediction_id"] == predicted["prediction_id"]
    assert body["probability"] == pytest.approx(predicted["probability"], abs=1e-12)
    assert body["input"] == predicted["input"] and body["heatmap_format"] == "png"


def assert_store_down(servers, clients, data: bytes) -> None:
    a, b = clients
    started = time.perf_counter()
    predicted = predict(a, data)  # the prediction itself never depends on the store
    assert time.perf_counter() - started < REDIS_TIMEOUT_S + 20
    response = b.get(f"/explain/{predicted['prediction_id']}")
    assert response.status_code == 503, response.text
    body = response.json()
    assert body["error"]["code"] == "store_unavailable" and "unreachable" in body["error"]["message"]
    assert body["disclaimer"] == RESEARCH_DISCLAIMER
    assert "not stored" in servers[0].log()  # the failed write was logged, not raised


def test_id_from_one_process_is_explained_by_the_other(replicas, sample_images):
    servers, clients = replicas
    assert servers[0].base_url != servers[1].base_url
    for path in (sample_images["NORMAL"][0], sample_images["PNEUMONIA"][0]):
        assert_shared(clients, path.read_bytes())
        assert_shared(clients[::-1], path.read_bytes())
    assert clients[1].get("/explain/0123456789abcdef").status_code == 404


def test_redis_down_or_hung_predict_answers_explain_is_503_then_recovers(replicas, redis_server, sample_images):
    servers, clients = replicas
    data = sample_images["NORMAL"][0].read_bytes()
    redis_server.pause()  # hung: the port accepts, nothing answers, the client's timeout applies
    try:
        assert_store_down(servers, clients, data)
    finally:
        redis_server.resume()
    redis_server.kill()  # down: connection refused
    assert_store_down(servers, clients, data)
    redis_server.start()  # same port: the replicas reconnect on their own
    assert_shared(clients, data)
    for server in servers:
        assert server.process.poll() is None
        assert "Traceback" not in server.log()
