"""Start-up behaviour of real uvicorn processes: refuse tampered bundles, degrade without model.keras."""

from __future__ import annotations

import subprocess

import httpx

from pneumonia.bundle import KERAS_FILENAME, ONNX_FILENAME
from tests.support import copy_bundle, launch


def test_tampered_onnx_makes_the_server_exit_nonzero_naming_the_checksum(tiny_bundle, tmp_path):
    bundle = copy_bundle(tiny_bundle, tmp_path / "bundle")
    onnx = bundle / ONNX_FILENAME
    data = bytearray(onnx.read_bytes())
    data[len(data) // 2] ^= 0xFF
    onnx.write_bytes(bytes(data))
    process, base_url = launch(bundle, tmp_path / "server.log")
    try:
        code = process.wait(timeout=120)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    output = (tmp_path / "server.log").read_text()
    assert code != 0
    assert "refusing to start" in output and "checksum mismatch" in output and ONNX_FILENAME in output


def test_bundle_without_keras_serves_predictions_but_not_explanations(
    start_server, tiny_bundle, tmp_path, sample_images
):
    bundle = copy_bundle(tiny_bundle, tmp_path / "bundle")
    (bundle / KERAS_FILENAME).unlink()
    server = start_server(bundle)
    jpeg = sample_images["NORMAL"][0].read_bytes()
    with httpx.Client(base_url=server.base_url, timeout=60) as client:
        ready = client.get("/health/ready")
        assert ready.status_code == 200 and ready.json()["explain"] is False
        assert client.post("/predict", files={"file": ("x.jpeg", jpeg)}).status_code == 200
        refused = client.post("/explain", files={"file": ("x.jpeg", jpeg)})
        assert refused.status_code == 503 and KERAS_FILENAME in refused.json()["error"]["message"]
        predicted = client.post("/predict", files={"file": ("x.jpeg", jpeg)}).json()
        assert client.get(f"/explain/{predicted['prediction_id']}").status_code == 503


def test_sigterm_shuts_down_gracefully(start_server, tiny_bundle, tmp_path):
    bundle = copy_bundle(tiny_bundle, tmp_path / "bundle")
    (bundle / KERAS_FILENAME).unlink()  # ONNX only: starts in seconds
    server = start_server(bundle)
    assert server.stop() in (0, -15)
    assert "Application shutdown complete" in server.log()
