"""In-process HTTP tests (httpx over ASGI) against the tiny bundle."""

import asyncio
import base64
import io
import threading

import httpx
import numpy as np
import pytest
from PIL import Image

from pneumonia.bundle import RESEARCH_DISCLAIMER
from pneumonia.explain import colour_bar_width


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def run(coro):
    return asyncio.run(coro)


async def call(app, method, url, **kwargs):
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        return await client.request(method, url, **kwargs)


def assert_error(response, status, code=None):
    assert response.status_code == status, response.text
    body = response.json()
    assert body["disclaimer"] == RESEARCH_DISCLAIMER
    assert body["error"]["message"]
    if code:
        assert body["error"]["code"] == code
    return body["error"]


def test_ready_is_503_until_the_model_is_loaded(make_app):
    unloaded = make_app(loaded=False)
    assert_error(run(call(unloaded, "GET", "/health/ready")), 503, "not_ready")
    assert run(call(unloaded, "GET", "/health/live")).status_code == 200
    assert_error(run(call(unloaded, "POST", "/predict", files={"file": ("x", b"1")})), 503, "not_ready")
    ready = run(call(make_app(), "GET", "/health/ready"))
    assert ready.status_code == 200 and ready.json()["status"] == "ready" and ready.json()["explain"] is True


def test_lifespan_loads_the_bundle(tiny_bundle):
    from app.config import Settings
    from app.main import create_app

    app = create_app(Settings(model_dir=tiny_bundle))
    assert app.state.service is None  # nothing loaded by create_app itself

    async def scenario():
        async with app.router.lifespan_context(app):
            return await call(app, "GET", "/health/ready")

    assert run(scenario()).status_code == 200
    assert app.state.service is None


def test_predict_returns_probability_label_and_disclaimer(make_app, sample_jpeg, loaded_service):
    response = run(call(make_app(), "POST", "/predict", files={"file": ("a.jpeg", sample_jpeg, "image/jpeg")}))
    assert response.status_code == 200, response.text
    body = response.json()
    assert 0.0 <= body["probability"] <= 1.0
    default = loaded_service.metadata.operating_point()
    assert body["operating_point"] == default.name and body["threshold"] == default.threshold
    at_threshold = run(
        call(make_app(), "POST", f"/predict?threshold={default.threshold!r}", files={"file": ("a", sample_jpeg)})
    )
    assert body["label"] == at_threshold.json()["label"]  # the default point labels with its own threshold
    assert body["disclaimer"] == RESEARCH_DISCLAIMER
    assert body["input"]["format"] == "JPEG"
    assert body["model"]["sha256"] == loaded_service.metadata.checksums.onnx_sha256
    assert response.headers["x-request-id"]


def test_custom_threshold_decides_the_label(make_app, sample_jpeg):
    app = make_app()
    low = run(call(app, "POST", "/predict?threshold=0", files={"file": ("a", sample_jpeg)})).json()
    assert (low["label"], low["operating_point"]) == ("PNEUMONIA", "custom")
    probability = low["probability"]
    equal = run(call(app, "POST", f"/predict?threshold={probability!r}", files={"file": ("a", sample_jpeg)})).json()
    assert equal["label"] == "PNEUMONIA"  # a probability equal to the threshold is positive
    if probability < 1.0:
        above = float(np.nextafter(probability, 1.0))
        high = run(call(app, "POST", f"/predict?threshold={above!r}", files={"file": ("a", sample_jpeg)})).json()
        assert high["label"] == "NORMAL"


def test_operating_point_validation(make_app, sample_jpeg, loaded_service):
    app = make_app()
    names = [p.name for p in loaded_service.metadata.operating_points]
    error = assert_error(
        run(call(app, "POST", "/predict?operating_point=bogus", files={"file": ("a", sample_jpeg)})), 422
    )
    assert all(name in error["message"] for name in names)
    assert_error(
        run(
            call(app, "POST", f"/predict?operating_point={names[0]}&threshold=0.5", files={"file": ("a", sample_jpeg)})
        ),
        422,
    )
    assert_error(run(call(app, "POST", "/predict?threshold=1.5", files={"file": ("a", sample_jpeg)})), 422)
    ok = run(call(app, "POST", f"/predict?operating_point={names[-1]}", files={"file": ("a", sample_jpeg)}))
    assert ok.status_code == 200 and ok.json()["operating_point"] == names[-1]


@pytest.mark.parametrize(
    "kwargs, status, code",
    [
        ({"files": {"file": ("a", b"")}}, 400, "empty_file"),
        ({"files": [("file", ("a", b"x")), ("file", ("b", b"y"))]}, 400, "too_many_files"),
        ({"files": {"image": ("a", b"x")}}, 422, "missing_file"),
        ({"content": b"\xff\xd8", "headers": {"content-type": "image/gif"}}, 415, "unsupported_media_type"),
        ({"content": b"", "headers": {"content-type": "image/png"}}, 400, "empty_file"),
        ({"files": {"file": ("a.jpg", b"this is not an image at all")}}, 415, "unsupported_format"),
        ({"content": b"garbage", "headers": {"content-type": "multipart/form-data"}}, 400, "malformed_multipart"),
    ],
)
def test_bad_requests_get_json_errors(make_app, kwargs, status, code):
    assert_error(run(call(make_app(), "POST", "/predict", **kwargs)), status, code)


def test_truncated_jpeg_is_422(make_app, sample_jpeg):
    assert_error(
        run(call(make_app(), "POST", "/predict", files={"file": ("a", sample_jpeg[: len(sample_jpeg) // 2])})),
        422,
        "corrupt_image",
    )


def test_upload_limit_with_and_without_content_length(make_app):
    app = make_app(max_upload_bytes=10_000)
    assert_error(run(call(app, "POST", "/predict", files={"file": ("a", b"\0" * 20_000)})), 413, "upload_too_large")

    async def chunked():
        boundary = b"xyz"
        yield b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\n'
        for _ in range(10):
            yield b"\0" * 4096
        yield b"\r\n--" + boundary + b"--\r\n"

    response = run(
        call(app, "POST", "/predict", content=chunked(), headers={"content-type": "multipart/form-data; boundary=xyz"})
    )
    assert "content-length" not in response.request.headers
    assert_error(response, 413, "upload_too_large")
    small = png_bytes(np.full((64, 64), 128, np.uint8))
    assert run(call(app, "POST", "/predict", files={"file": ("a", small)})).status_code == 200


def test_explain_json_and_png(make_app, sample_jpeg):
    app = make_app()
    body = run(call(app, "POST", "/explain", files={"file": ("a", sample_jpeg)})).json()
    overlay = Image.open(io.BytesIO(base64.b64decode(body["heatmap"])))
    assert body["heatmap_format"] == "png" and overlay.mode == "RGB"
    width, height = body["input"]["width"], body["input"]["height"]
    assert overlay.size == (width + colour_bar_width(height), height)  # the image, then the colour bar's strip
    png = run(call(app, "POST", "/explain?format=png", files={"file": ("a", sample_jpeg)}))
    assert png.headers["content-type"] == "image/png"
    assert png.headers["x-disclaimer"] == RESEARCH_DISCLAIMER
    assert float(png.headers["x-probability"]) == pytest.approx(body["probability"], abs=1e-6)
    assert png.headers["x-label"] == body["label"]


def test_explain_by_prediction_id(make_app, sample_jpeg):
    app = make_app()
    predicted = run(call(app, "POST", "/predict", files={"file": ("a", sample_jpeg)})).json()
    explained = run(call(app, "GET", f"/explain/{predicted['prediction_id']}"))
    assert explained.status_code == 200
    assert explained.json()["probability"] == predicted["probability"]
    assert explained.json()["heatmap"]
    assert_error(run(call(app, "GET", "/explain/" + "0" * 32)), 404, "prediction_not_found")


def test_explain_disabled_is_503_while_predict_works(make_app, sample_jpeg):
    app = make_app(explain_enabled=False)
    assert run(call(app, "POST", "/predict", files={"file": ("a", sample_jpeg)})).status_code == 200
    assert_error(run(call(app, "POST", "/explain", files={"file": ("a", sample_jpeg)})), 503, "explain_unavailable")
    assert run(call(app, "GET", "/health/ready")).json()["explain"] is False


def test_busy_service_answers_503_with_retry_after(make_app, sample_jpeg):
    app = make_app(max_concurrency=1, max_queue=0)
    service = app.state.service
    gate = threading.Event()
    entered = threading.Event()
    original = service._analyse_sync

    def slow(*args):
        entered.set()
        gate.wait(10)
        return original(*args)

    service._analyse_sync = slow

    async def scenario():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            first = asyncio.create_task(client.post("/predict", files={"file": ("a", sample_jpeg)}))
            while not entered.is_set():
                await asyncio.sleep(0.01)
            second = await client.post("/predict", files={"file": ("a", sample_jpeg)})
            gate.set()
            return await first, second, await client.get("/metrics")

    first, second, metrics = run(scenario())
    assert first.status_code == 200
    assert_error(second, 503, "busy")
    assert second.headers["retry-after"] == "1"
    assert "pneumonia_rejected_requests_total 1.0" in metrics.text


def test_unexpected_errors_become_500_without_internals(make_app, sample_jpeg):
    app = make_app()

    def broken(*args):
        raise RuntimeError("secret internal detail /opt/models")

    app.state.service._analyse_sync = broken
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)

    async def scenario():
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return await client.post("/predict", files={"file": ("a", sample_jpeg)})

    response = run(scenario())
    assert_error(response, 500, "internal_error")
    assert "secret" not in response.text and "/opt" not in response.text


def test_model_endpoint_describes_the_model(make_app, loaded_service):
    body = run(call(make_app(), "GET", "/model")).json()
    meta = loaded_service.metadata
    assert body["name"] == meta.name and body["backbone"] == meta.backbone
    assert body["input_size"] == {"height": meta.input_size[0], "width": meta.input_size[1]}
    assert [p["name"] for p in body["operating_points"]] == [p.name for p in meta.operating_points]
    assert body["default_operating_point"] == meta.default_operating_point
    assert body["limitations"] and body["intended_use"] and body["validation"]["metrics"]
    assert body["checksums"]["onnx_sha256"] == meta.checksums.onnx_sha256
    assert body["disclaimer"] == RESEARCH_DISCLAIMER


def test_openapi_documents_the_multipart_file_field(make_app):
    schema = run(call(make_app(), "GET", "/openapi.json")).json()
    assert "research" in schema["info"]["title"].lower()
    for path in ("/predict", "/explain"):
        body = schema["paths"][path]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
        assert body["required"] == ["file"] and body["properties"]["file"]["format"] == "binary"
    assert "examples" in schema["components"]["schemas"]["Prediction"]


def test_metrics_are_per_app(make_app, sample_jpeg):
    first, second = make_app(), make_app()
    run(call(first, "POST", "/predict", files={"file": ("a", sample_jpeg)}))
    text_first = run(call(first, "GET", "/metrics")).text
    text_second = run(call(second, "GET", "/metrics")).text
    assert 'pneumonia_http_requests_total{method="POST",route="/predict",status="200"} 1.0' in text_first
    assert 'route="/predict"' not in text_second
    assert "pneumonia_inference_duration_seconds_count" in text_first
