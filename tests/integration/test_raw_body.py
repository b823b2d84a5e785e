"""The raw-body upload form (Content-Type image/jpeg, image/png or application/dicom, the file as the body)
against a real uvicorn: same results, limits and errors as the multipart form."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
from PIL import Image

from pneumonia.bundle import RESEARCH_DISCLAIMER
from tests.media import dicom, gray_of, png
from tests.support import copy_bundle

UPLOAD_LIMIT = 1024 * 1024


@pytest.fixture(scope="module")
def client(start_server, tiny_bundle, tmp_path_factory):
    bundle = copy_bundle(tiny_bundle, tmp_path_factory.mktemp("bundle") / "bundle")
    server = start_server(bundle, PNEUMONIA_MAX_UPLOAD_BYTES=str(UPLOAD_LIMIT))
    with httpx.Client(base_url=server.base_url, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def uploads(sample_images) -> dict[str, bytes]:
    """One real X-ray in each accepted format, keyed by the Content-Type it is sent with."""
    path = sample_images["PNEUMONIA"][0]
    gray = gray_of(path)
    stored = 500 + gray.astype(np.int64) * 12
    return {
        "image/jpeg": path.read_bytes(),
        "image/png": png(Image.fromarray(gray)),
        "application/dicom": dicom(stored, "MONOCHROME2", slope=1.0, intercept=0.0, center=2000.0, width=3200.0),
    }


def raw(client, path: str, data, content_type: str, **params) -> httpx.Response:
    return client.post(path, params=params, content=data, headers={"content-type": content_type})


def multipart(client, path: str, data: bytes) -> httpx.Response:
    return client.post(path, files={"file": ("x", data, "application/octet-stream")})


def error_of(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["disclaimer"] == RESEARCH_DISCLAIMER
    return body["error"]


@pytest.mark.parametrize("content_type", ["image/jpeg", "image/png", "application/dicom"])
def test_raw_body_predicts_like_multipart(client, uploads, content_type):
    data = uploads[content_type]
    by_raw = raw(client, "/predict", data, content_type)
    assert by_raw.status_code == 200, by_raw.text
    body = by_raw.json()
    assert body["disclaimer"] == RESEARCH_DISCLAIMER
    assert (
        body["input"]["format"]
        == {"image/jpeg": "JPEG", "image/png": "PNG", "application/dicom": "DICOM"}[content_type]
    )
    assert body["probability"] == pytest.approx(multipart(client, "/predict", data).json()["probability"], abs=1e-9)
    # the id is usable like a multipart one
    assert client.get(f"/explain/{body['prediction_id']}").status_code == 200


def test_raw_body_explain_json_and_png(client, uploads):
    data = uploads["image/jpeg"]
    explained = raw(client, "/explain", data, "image/jpeg")
    assert explained.status_code == 200, explained.text
    assert explained.json()["heatmap_format"] == "png"
    overlay = raw(client, "/explain", data, "image/jpeg", format="png")
    assert overlay.status_code == 200 and overlay.content.startswith(b"\x89PNG")


def test_content_type_selects_the_form_not_the_format(client, uploads):
    """As for multipart, the format is sniffed from the bytes: a PNG labelled image/jpeg is still a PNG."""
    response = raw(client, "/predict", uploads["image/png"], "image/jpeg")
    assert response.status_code == 200 and response.json()["input"]["format"] == "PNG"


@pytest.mark.parametrize("path", ["/predict", "/explain"])
def test_oversize_raw_body_is_413(client, path):
    too_big = b"\xff\xd8\xff" + b"\0" * UPLOAD_LIMIT
    assert error_of(raw(client, path, too_big, "image/jpeg"), 413)["code"] == "upload_too_large"

    def chunked():  # no Content-Length: the limit is enforced while the body streams in
        for _ in range(UPLOAD_LIMIT // 65536 + 2):
            yield b"\0" * 65536

    response = raw(client, path, chunked(), "image/png")
    assert "content-length" not in response.request.headers
    assert error_of(response, 413)["code"] == "upload_too_large"


def test_a_generic_binary_body_is_sniffed_like_any_other(client, uploads):
    """application/octet-stream: the format comes from the bytes, as for a typed body."""
    typed = raw(client, "/predict", uploads["image/jpeg"], "image/jpeg")
    generic = raw(client, "/predict", uploads["image/jpeg"], "application/octet-stream")
    assert generic.status_code == typed.status_code == 200, generic.text
    assert generic.json()["probability"] == typed.json()["probability"]
    assert generic.json()["input"]["format"] == "JPEG"


@pytest.mark.parametrize("content_type", ["image/gif", "text/plain"])
def test_unsupported_content_type_is_415(client, uploads, content_type):
    error = error_of(raw(client, "/predict", uploads["image/jpeg"], content_type), 415)
    assert error["code"] == "unsupported_media_type"
    assert "image/jpeg" in error["message"] and "multipart/form-data" in error["message"]


@pytest.mark.parametrize("path", ["/predict", "/explain"])
def test_empty_raw_body_is_400_like_an_empty_file(client, path):
    error = error_of(raw(client, path, b"", "image/jpeg"), 400)
    assert error == error_of(multipart(client, path, b""), 400)
    assert error["code"] == "empty_file"


@pytest.mark.parametrize(
    "data, status",
    [(b"this is a text file, not an image", 415), (None, 422)],  # None: a truncated JPEG
)
def test_bad_bytes_get_the_same_error_as_multipart(client, uploads, data, status):
    data = uploads["image/jpeg"][:2000] if data is None else data
    error = error_of(raw(client, "/predict", data, "image/jpeg"), status)
    assert error == error_of(multipart(client, "/predict", data), status)
