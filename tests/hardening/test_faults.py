"""Broken bundles and shutdown, against real uvicorn processes.

Documented behaviour (docs/operating.md): a bundle that is missing a file, has a truncated or tampered
model.onnx, or whose metadata.json is not valid JSON or fails the schema makes uvicorn exit non-zero with one
log line `refusing to start: <reason>`. A bundle without model.keras starts degraded: ready, /predict works,
/explain answers 503 saying why. SIGTERM lets in-flight requests finish before the process exits.
"""

from __future__ import annotations

import io
import json
import signal
import subprocess
import threading
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from pneumonia.bundle import KERAS_FILENAME, METADATA_FILENAME, ONNX_FILENAME, sha256_file
from tests.support import copy_bundle, launch

EXIT_TIMEOUT_S = 120


def _truncate(bundle):
    onnx = bundle / ONNX_FILENAME
    onnx.write_bytes(onnx.read_bytes()[: onnx.stat().st_size // 2])
    # re-record the checksum so start-up gets past verification and onnxruntime itself must refuse the file
    metadata = json.loads((bundle / METADATA_FILENAME).read_text())
    metadata["checksums"]["onnx_sha256"] = sha256_file(onnx)
    (bundle / METADATA_FILENAME).write_text(json.dumps(metadata))


def _tamper(bundle):
    onnx = bundle / ONNX_FILENAME
    data = bytearray(onnx.read_bytes())
    data[len(data) // 2] ^= 0xFF
    onnx.write_bytes(bytes(data))


def _schema_violation(bundle):
    metadata = json.loads((bundle / METADATA_FILENAME).read_text())
    metadata["operating_points"][0]["threshold"] = 1.5
    (bundle / METADATA_FILENAME).write_text(json.dumps(metadata))


BROKEN_BUNDLES = {
    "missing_onnx": (
        lambda b: (b / ONNX_FILENAME).unlink(),
        [ONNX_FILENAME, "missing"],
    ),
    "truncated_onnx": (_truncate, [ONNX_FILENAME, "onnxruntime cannot load"]),
    "tampered_onnx": (_tamper, [ONNX_FILENAME, "checksum mismatch"]),
    "metadata_not_json": (
        lambda b: (b / METADATA_FILENAME).write_text('{"name": "x",'),
        [METADATA_FILENAME, "invalid metadata", "invalid json"],
    ),
    "metadata_fails_schema": (
        _schema_violation,
        [METADATA_FILENAME, "invalid metadata", "operating_points.0.threshold"],
    ),
    "missing_metadata": (
        lambda b: (b / METADATA_FILENAME).unlink(),
        [METADATA_FILENAME, "missing"],
    ),
}


@pytest.mark.parametrize("name", sorted(BROKEN_BUNDLES))
def test_broken_bundle_refuses_to_start_with_a_one_line_reason(name, tiny_bundle, tmp_path):
    breaker, expected_words = BROKEN_BUNDLES[name]
    bundle = copy_bundle(tiny_bundle, tmp_path / "bundle")
    breaker(bundle)
    process, _ = launch(bundle, tmp_path / "server.log")
    try:
        code = process.wait(timeout=EXIT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        pytest.fail(f"{name}: the server did not exit")
    output = (tmp_path / "server.log").read_text(errors="replace")
    assert code != 0, output[-2000:]
    reasons = [line for line in output.splitlines() if "refusing to start:" in line]
    assert len(reasons) == 1, output[-3000:]
    for word in expected_words:
        assert word.lower() in reasons[0].lower(), (name, reasons[0])
    assert "Application startup complete" not in output


@pytest.fixture(scope="module")
def degraded(start_server, tiny_bundle, tmp_path_factory):
    bundle = copy_bundle(tiny_bundle, tmp_path_factory.mktemp("bundle") / "bundle")
    (bundle / KERAS_FILENAME).unlink()
    return start_server(bundle)


def test_missing_keras_starts_degraded(degraded, sample_images):
    jpeg = sample_images["NORMAL"][0].read_bytes()
    with httpx.Client(base_url=degraded.base_url, timeout=60) as client:
        ready = client.get("/health/ready")
        assert ready.status_code == 200 and ready.json()["explain"] is False
        assert client.get("/model").json()["explain_available"] is False
        assert client.post("/predict", files={"file": ("x.jpeg", jpeg)}).status_code == 200
        refused = client.post("/explain", files={"file": ("x.jpeg", jpeg)})
        assert refused.status_code == 503
        error = refused.json()["error"]
        assert error["code"] == "explain_unavailable" and KERAS_FILENAME in error["message"]
        assert "Retry-After" not in refused.headers  # retrying will not help: this is not back-pressure
    assert "serving without explanations" in degraded.log()


def _large_png(side: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    gradient = np.linspace(0, 200, side, dtype=np.float32)[None, :] + rng.normal(0, 20, (side, side))
    buffer = io.BytesIO()
    Image.fromarray(np.clip(gradient, 0, 255).astype(np.uint8)).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def test_sigterm_lets_in_flight_requests_finish(start_server, tiny_bundle, tmp_path):
    bundle = copy_bundle(tiny_bundle, tmp_path / "bundle")
    server = start_server(bundle, uvicorn_args=("--timeout-graceful-shutdown", "60"))
    uploads = [_large_png(2048, seed) for seed in range(4)]
    results: list[tuple[int, float] | BaseException] = []
    lock = threading.Lock()

    def explain(data: bytes) -> None:
        try:
            with httpx.Client(base_url=server.base_url, timeout=120) as client:
                response = client.post("/explain", files={"file": ("big.png", data, "image/png")})
                outcome: tuple[int, float] | BaseException = (response.status_code, response.json()["probability"])
        except BaseException as exc:
            outcome = exc
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=explain, args=(data,)) for data in uploads]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 30
    with httpx.Client(base_url=server.base_url, timeout=10) as probe:
        while time.monotonic() < deadline:  # wait until all four are inside the app
            metrics = probe.get("/metrics").text
            line = next(row for row in metrics.splitlines() if row.startswith("pneumonia_http_requests_in_flight"))
            if float(line.split()[-1]) >= len(uploads) + 1:  # +1: this /metrics request
                break
            time.sleep(0.05)
        else:
            pytest.fail("the slow requests never got in flight")
    started = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    for thread in threads:
        thread.join(timeout=120)
    code = server.process.wait(timeout=90)
    assert all(isinstance(r, tuple) and r[0] == 200 for r in results) and len(results) == len(uploads), results
    # uvicorn re-raises the SIGTERM it caught once shutdown is complete: -15 is its clean exit status
    assert code in (0, -signal.SIGTERM), code
    log = server.log()
    assert "Waiting for connections to close" in log or "Shutting down" in log
    assert "Application shutdown complete" in log and "Traceback" not in log
    print(
        f"graceful shutdown: {len(uploads)} in-flight /explain finished {time.monotonic() - started:.1f}s after SIGTERM"
    )
