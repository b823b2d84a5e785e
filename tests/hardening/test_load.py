"""Bounded load test on loopback: concurrent httpx clients mixing /predict, /explain and bad inputs.

Allowed outcomes: 200 for good uploads, the intended 4xx for bad ones, and 503 back-pressure that carries
Retry-After. Anything else (5xx, wrong status, a timeout, a dropped connection) fails the test. Latency
percentiles and counts are printed, and written as JSON to $LOAD_TEST_REPORT when that is set (a test writes no
tracked file by itself: `LOAD_TEST_REPORT=bench/results/load.json` refreshes the committed evidence on purpose). The server's RSS after warm-up vs
at the end must stay within +10% (the prediction cache is kept small and filled during warm-up, so its
bounded growth is not mistaken for a leak).

Default run: ~10 s with 8 clients. `python -m pytest -m slow tests/hardening/test_load.py`: 60 s, 32 clients.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.hardening import corpus

CACHE_SIZE = corpus.SHARED_CACHE_SIZE
REQUEST_TIMEOUT_S = 60


@pytest.fixture(scope="module")
def server(shared_server):
    return shared_server  # session-wide server from tests/hardening/conftest.py


def request_mix(sample_images) -> list[tuple[str, str, dict, set[int]]]:
    """(kind, endpoint, httpx kwargs, allowed statuses); 503 is added for every request."""
    jpegs = [p.read_bytes() for label in ("NORMAL", "PNEUMONIA") for p in sample_images[label]]
    png = corpus.png_bytes(512)
    truncated = jpegs[0][: len(jpegs[0]) // 3]
    mix: list[tuple[str, str, dict[str, Any], set[int]]] = []
    for data in jpegs:
        mix.append(
            (
                "predict",
                "/predict",
                {"files": corpus.upload("x.jpeg", data, "image/jpeg")},
                {200},
            )
        )
    mix.append(
        (
            "predict",
            "/predict",
            {"files": corpus.upload("x.png", png, "image/png")},
            {200},
        )
    )
    mix.append(
        (
            "explain",
            "/explain",
            {"files": corpus.upload("x.jpeg", jpegs[1], "image/jpeg")},
            {200},
        )
    )
    mix.append(
        (
            "explain",
            "/explain",
            {"files": corpus.upload("x.png", png, "image/png")},
            {200},
        )
    )
    mix.append(
        (
            "bad",
            "/predict",
            {"files": corpus.upload("x.png", b"not an image" * 10)},
            {415},
        )
    )
    mix.append(("bad", "/explain", {"files": corpus.upload("x.jpeg", truncated)}, {422}))
    mix.append(("bad", "/predict", {"files": corpus.upload("x.png", b"")}, {400}))
    mix.append(
        (
            "bad",
            "/predict",
            {"content": b"{}", "headers": {"content-type": "application/json"}},
            {415},
        )
    )
    mix.append(
        (
            "bad",
            "/predict",
            {"files": corpus.upload("x.png", corpus.png_bomb(50_000, 50_000))},
            {413},
        )
    )
    return mix


def run_load(server, sample_images, *, clients: int, seconds: float, label: str) -> None:
    mix = request_mix(sample_images)
    with httpx.Client(base_url=server.base_url, timeout=REQUEST_TIMEOUT_S) as warm:
        for _ in range(3):  # warm-up: every request kind, and fill the prediction cache
            for _kind, endpoint, kwargs, allowed in mix:
                assert warm.post(endpoint, **kwargs).status_code in allowed
        for _ in range(CACHE_SIZE * 2):
            assert warm.post("/predict", **mix[0][2]).status_code == 200
    rss_warm = server.rss_kib()

    latencies: dict[str, list[float]] = {"predict": [], "explain": [], "bad": []}
    statuses: Counter[str] = Counter()
    failures: list[str] = []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(base_url=server.base_url, timeout=REQUEST_TIMEOUT_S) as client:
            while time.monotonic() < deadline:
                kind, endpoint, kwargs, allowed = rng.choice(mix)
                started = time.perf_counter()
                try:
                    response = client.post(endpoint, **kwargs)
                except httpx.HTTPError as exc:
                    with lock:
                        failures.append(f"{kind} {endpoint}: {type(exc).__name__}: {exc}")
                    continue
                elapsed = time.perf_counter() - started
                problem = None
                if response.status_code == 503:
                    if not response.headers.get("retry-after"):
                        problem = "503 without Retry-After"
                    elif response.json()["error"]["code"] != "busy":
                        problem = f"503 {response.text[:200]}"
                elif response.status_code not in allowed:
                    problem = f"status {response.status_code}: {response.text[:200]}"
                with lock:
                    statuses[f"{kind} {response.status_code}"] += 1
                    if problem:
                        failures.append(f"{kind} {endpoint}: {problem}")
                    elif response.status_code != 503:
                        latencies[kind].append(elapsed)
                if response.status_code == 503:
                    time.sleep(min(float(response.headers.get("retry-after", 1)), 1.0) * rng.random())

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(clients)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=seconds + 2 * REQUEST_TIMEOUT_S)
    wall = time.monotonic() - started
    rss_end = server.rss_kib()
    with httpx.Client(base_url=server.base_url, timeout=10) as client:
        ready = client.get("/health/ready").status_code

    def percentiles(values: list[float]) -> dict[str, float | int]:
        if not values:
            return {"n": 0}
        ms = np.asarray(values) * 1000
        return {
            "n": len(values),
            **{f"p{q}_ms": round(float(np.percentile(ms, q)), 1) for q in (50, 95, 99)},
        }

    report = {
        "label": label,
        "clients": clients,
        "seconds": round(wall, 1),
        "requests": sum(statuses.values()),
        "throughput_rps": round(sum(statuses.values()) / wall, 1),
        "statuses": dict(sorted(statuses.items())),
        "busy_503": sum(n for key, n in statuses.items() if key.endswith(" 503")),
        "latency": {kind: percentiles(values) for kind, values in latencies.items()},
        "all": percentiles([v for values in latencies.values() for v in values]),
        "rss_kib": {
            "after_warmup": rss_warm,
            "end": rss_end,
            "growth_pct": round(100 * (rss_end / rss_warm - 1), 1),
        },
        "failures": failures[:20],
        "n_failures": len(failures),
    }
    if os.environ.get("LOAD_TEST_REPORT"):
        path = Path(os.environ["LOAD_TEST_REPORT"])
        previous = json.loads(path.read_text()) if path.is_file() else {}
        path.write_text(json.dumps({**previous, label: report}, indent=2) + "\n")
    print(f"\nload test ({label}):\n{json.dumps(report, indent=2)}")

    assert not any(thread.is_alive() for thread in threads), "a client hung"
    assert not failures, failures[:10]
    assert ready == 200
    assert all(latencies[kind] for kind in latencies), report["statuses"]
    assert rss_end <= rss_warm * 1.10, report["rss_kib"]


def test_load_short(server, sample_images):
    run_load(server, sample_images, clients=8, seconds=10, label="short")


@pytest.mark.slow
def test_load_full(server, sample_images):
    run_load(server, sample_images, clients=32, seconds=60, label="full")
