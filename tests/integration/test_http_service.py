"""One real uvicorn server for the module, exercised over HTTP with real and synthetic images."""

from __future__ import annotations

import base64
import io

import httpx
import numpy as np
import pytest
from PIL import Image

from pneumonia.bundle import RESEARCH_DISCLAIMER
from pneumonia.explain import colour_bar_width
from tests.media import dicom, gray_of, png, png_bomb, png_variants
from tests.support import copy_bundle

UPLOAD_LIMIT = 3 * 1024 * 1024
SECRET_NAME = "PATIENT-DOE-JOHN-19700101-secret.jpeg"  # must never reach the logs


@pytest.fixture(scope="module")
def spool_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("server_tmpdir")


@pytest.fixture(scope="module")
def server(start_server, tiny_bundle, tmp_path_factory, spool_dir):
    bundle = copy_bundle(tiny_bundle, tmp_path_factory.mktemp("bundle") / "bundle")
    return start_server(bundle, TMPDIR=str(spool_dir), PNEUMONIA_MAX_UPLOAD_BYTES=str(UPLOAD_LIMIT))


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.base_url, timeout=60) as client:
        yield client


def upload(client, data: bytes, path: str = "/predict", **params):
    return client.post(path, params=params, files={"file": (SECRET_NAME, data, "application/octet-stream")})


def ok(response) -> dict:
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["disclaimer"] == RESEARCH_DISCLAIMER
    return body


def assert_still_ready(client):
    assert client.get("/health/ready").status_code == 200


@pytest.mark.parametrize("label", ["NORMAL", "PNEUMONIA"])
def test_predict_and_explain_sample_jpegs(client, sample_images, label):
    for path in sample_images[label]:
        data = path.read_bytes()
        predicted = ok(upload(client, data))
        assert 0.0 <= predicted["probability"] <= 1.0 and predicted["input"]["format"] == "JPEG"
        explained = ok(upload(client, data, "/explain"))
        assert explained["probability"] == pytest.approx(predicted["probability"], abs=1e-6)
        overlay = Image.open(io.BytesIO(base64.b64decode(explained["heatmap"])))
        width, height = Image.open(path).size
        assert overlay.size == (width + colour_bar_width(height), height)  # the image, then the colour bar's strip


def test_png_variants_of_the_same_image_agree(client, sample_images):
    gray = gray_of(sample_images["NORMAL"][0])
    results = {}
    for name, data in png_variants(gray).items():
        body = ok(upload(client, data))
        assert body["input"] == {"format": "PNG", "width": gray.shape[1], "height": gray.shape[0]}, name
        results[name] = body["probability"]
    # 16-bit, RGB with equal channels and opaque RGBA are the same X-ray as the 8-bit gray PNG
    for name in ("gray16", "rgb", "rgba"):
        assert results[name] == pytest.approx(results["gray8"], abs=1e-5), name


def test_dicom_monochrome1_equals_inverted_monochrome2(client, sample_images):
    gray = gray_of(sample_images["PNEUMONIA"][0]).astype(np.int64)
    stored = 500 + gray * 12  # 500..3560 in 12 bits
    slope, intercept = 0.5, -1024.0  # modality values -774..756
    mono2 = dicom(stored, "MONOCHROME2", slope=slope, intercept=intercept, center=0.0, width=2000.0)
    # invert the stored values, flip the photometric interpretation and mirror the window accordingly
    inverted = 4095 - stored
    mirrored_center = slope * 4095 + 2 * intercept - 0.0
    mono1 = dicom(inverted, "MONOCHROME1", slope=slope, intercept=intercept, center=mirrored_center, width=2000.0)
    body2, body1 = ok(upload(client, mono2)), ok(upload(client, mono1))
    assert body2["input"]["format"] == body1["input"]["format"] == "DICOM"
    assert body1["probability"] == pytest.approx(body2["probability"], abs=1e-3)
    reference = ok(upload(client, png(Image.fromarray(gray.astype(np.uint8)))))
    assert body2["probability"] == pytest.approx(reference["probability"], abs=2e-3)
    ok(upload(client, mono1, "/explain"))


def test_bad_inputs_get_helpful_4xx_json_and_the_service_stays_ready(client, sample_images):
    jpeg = sample_images["NORMAL"][0].read_bytes()
    cases = {
        "empty": (upload(client, b""), 400, "empty_file"),
        "missing field": (client.post("/predict", files={"image": ("x.jpeg", jpeg)}), 422, "missing_file"),
        "not an image": (upload(client, b"%PDF-1.4 definitely not an x-ray" * 10), 415, "unsupported_format"),
        "truncated jpeg": (upload(client, jpeg[: len(jpeg) // 3]), 422, "corrupt_image"),
        "decompression bomb": (upload(client, png_bomb()), 413, "too_many_pixels"),
        "not multipart": (
            client.post("/predict", content=jpeg, headers={"content-type": "application/json"}),
            415,
            "unsupported_media_type",
        ),
    }
    for name, (response, status, code) in cases.items():
        assert response.status_code == status, (name, response.text)
        body = response.json()
        assert body["disclaimer"] == RESEARCH_DISCLAIMER and len(body["error"]["message"]) > 15, name
        if code:
            assert body["error"]["code"] == code, name
    bomb = cases["decompression bomb"][0].json()["error"]["message"]
    assert "50,000,000 pixels" in bomb and "DOS" not in bomb  # the service's limit, not Pillow's wording
    assert_still_ready(client)


def test_oversize_uploads_are_413_with_and_without_content_length(client):
    big = b"\0" * (UPLOAD_LIMIT + 100_000)
    declared = upload(client, big)
    assert declared.status_code == 413 and declared.json()["error"]["code"] == "upload_too_large"

    def chunked():
        yield (
            b'--b0undary\r\nContent-Disposition: form-data; name="file"; filename="'
            + SECRET_NAME.encode()
            + b'"\r\n\r\n'
        )
        for _ in range(UPLOAD_LIMIT // 65536 + 4):
            yield b"\0" * 65536
        yield b"\r\n--b0undary--\r\n"

    streamed = client.post(
        "/predict", content=chunked(), headers={"content-type": "multipart/form-data; boundary=b0undary"}
    )
    assert "content-length" not in streamed.request.headers
    assert streamed.status_code == 413 and streamed.json()["error"]["code"] == "upload_too_large"
    assert_still_ready(client)


def test_explain_by_prediction_id_and_png_format(client, sample_images):
    predicted = ok(upload(client, sample_images["PNEUMONIA"][1].read_bytes()))
    cached = ok(client.get(f"/explain/{predicted['prediction_id']}"))
    assert cached["probability"] == predicted["probability"] and cached["heatmap_format"] == "png"
    image = client.get(f"/explain/{predicted['prediction_id']}", params={"format": "png"})
    assert image.headers["content-type"] == "image/png" and image.headers["x-disclaimer"] == RESEARCH_DISCLAIMER
    assert image.headers["x-label"] == predicted["label"]
    width, height = predicted["input"]["width"], predicted["input"]["height"]
    assert Image.open(io.BytesIO(image.content)).size == (width + colour_bar_width(height), height)
    unknown = client.get("/explain/" + "f" * 32)
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "prediction_not_found"


def test_model_and_health_endpoints(client, tiny_bundle):
    assert client.get("/health/live").status_code == 200
    ready = client.get("/health/ready").json()
    assert ready["status"] == "ready" and ready["explain"] is True
    model = client.get("/model").json()
    assert model["name"] == ready["model"]["name"] and model["disclaimer"] == RESEARCH_DISCLAIMER
    assert client.get("/docs").status_code == 200


def test_metrics_count_requests(client):
    text = client.get("/metrics").text
    assert 'pneumonia_http_requests_total{method="POST",route="/predict",status="200"}' in text
    assert 'status="413"' in text and "pneumonia_inference_duration_seconds_bucket" in text
    assert "pneumonia_http_requests_in_flight" in text


def test_uploads_never_touch_disk(client, spool_dir, sample_images):
    # TensorFlow's autograph leaves its generated sources here at start-up; uploads must add nothing
    before = sorted(str(p.relative_to(spool_dir)) for p in spool_dir.rglob("*"))
    rng = np.random.default_rng(0)
    sizes = []
    for side in (64, 400, 1100, 1500):  # random noise PNGs: ~4 kB up to ~2.2 MB (> Starlette's 1 MB spool)
        data = png(Image.fromarray(rng.integers(0, 256, (side, side), dtype=np.uint8)))
        sizes.append(len(data))
        ok(upload(client, data))
        ok(upload(client, data, "/explain"))
    assert max(sizes) > 1024 * 1024
    upload(client, b"\0" * (UPLOAD_LIMIT + 1))
    assert sorted(str(p.relative_to(spool_dir)) for p in spool_dir.rglob("*")) == before


def test_logs_have_access_lines_but_no_upload_file_names(server, client):
    client.get("/health/live")
    log = server.log()
    assert "POST /predict 200" in log  # the access log is on...
    assert "PATIENT-DOE" not in log and "secret.jpeg" not in log  # ...and never names the upload
