"""/explain over real HTTP: the raw map (shape, range, encoding), ?method= for every method, the explained
class, and the PNG variant's headers."""

from __future__ import annotations

import base64
import json

import httpx
import numpy as np
import pytest

from pneumonia.explain import DEFAULT_METHOD, METHOD_NAMES
from tests.support import copy_bundle


@pytest.fixture(scope="module")
def client(start_server, tiny_bundle, tmp_path_factory):
    server = start_server(copy_bundle(tiny_bundle, tmp_path_factory.mktemp("bundle") / "bundle"))
    with httpx.Client(base_url=server.base_url, timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def sample_jpeg(sample_images) -> bytes:
    return sample_images["PNEUMONIA"][0].read_bytes()


@pytest.fixture(scope="module")
def model_size(client) -> tuple[int, int]:
    size = client.get("/model").json()["input_size"]
    return size["height"], size["width"]


def explain(client, data: bytes, path: str = "/explain", **params) -> httpx.Response:
    return client.post(path, params=params, files={"file": ("x.jpeg", data, "application/octet-stream")})


def decoded_map(body: dict) -> np.ndarray:
    m = body["map"]
    values = np.frombuffer(base64.b64decode(m["values"]), dtype="<f4")
    assert values.size == m["width"] * m["height"]
    return values.reshape(m["height"], m["width"])


def test_the_map_is_float32_in_0_1_at_the_model_input(client, sample_jpeg, model_size):
    response = explain(client, sample_jpeg)
    assert response.status_code == 200, response.text
    body = response.json()
    values = decoded_map(body)
    assert values.shape == model_size and body["map"]["resolution"] == "model_input"
    assert np.all(np.isfinite(values)) and values.min() >= 0.0 and values.max() <= 1.0
    assert body["method"] == body["map"]["method"] == DEFAULT_METHOD and body["map"]["layers"]
    assert body["explained_class"] == body["map"]["explained_class"] == body["label"]


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_every_method_can_be_asked_for(client, sample_jpeg, model_size, method):
    response = explain(client, sample_jpeg, method=method)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["method"] == body["map"]["method"] == method
    assert body["map"]["layers"] == client.get("/model").json()["explanations"]["methods"][method]
    values = decoded_map(body)
    assert values.shape == model_size and values.min() >= 0.0 and values.max() <= 1.0


def test_an_unknown_method_is_a_422_listing_the_valid_ones(client, sample_jpeg):
    response = explain(client, sample_jpeg, method="saliency_by_vibes")
    assert response.status_code == 422
    assert "method" in response.json()["error"]["message"]
    cached = client.get("/explain/" + "f" * 32, params={"method": "nope"})
    assert cached.status_code == 422


def test_the_explained_class_is_the_predicted_one(client, sample_jpeg):
    """threshold=1 makes every image NORMAL: the map then explains NORMAL (the negative logit's gradient)."""
    normal = explain(client, sample_jpeg, threshold=1.0).json()
    pneumonia = explain(client, sample_jpeg, threshold=0.0).json()
    assert normal["label"] == normal["explained_class"] == "NORMAL"
    assert pneumonia["label"] == pneumonia["explained_class"] == "PNEUMONIA"
    # the same image and method, opposite classes: not the same map (unless the model gives one class nothing)
    a, b = decoded_map(normal), decoded_map(pneumonia)
    assert not np.array_equal(a, b) or a.max() == 0 or b.max() == 0


def test_png_format_carries_method_class_and_warnings_in_headers(client, sample_jpeg):
    predicted = client.post("/predict", files={"file": ("x.jpeg", sample_jpeg, "application/octet-stream")}).json()
    image = client.get(f"/explain/{predicted['prediction_id']}", params={"format": "png", "method": "layercam"})
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert image.headers["x-method"] == "layercam" and image.headers["x-explained-class"] == predicted["label"]
    assert len(image.headers["x-map-layers"].split(",")) == 3
    assert json.loads(image.headers["x-warnings"]) == predicted["warnings"]


def test_the_model_card_names_the_served_explanations(client, tiny_bundle):
    from pneumonia.bundle import read_metadata

    explanations = client.get("/model").json()["explanations"]
    assert explanations["default_method"] == DEFAULT_METHOD
    assert set(explanations["methods"]) == set(METHOD_NAMES) and explanations["baselines"]
    # /explain starts from the activation model.onnx gives it, which the bundle names
    activation = read_metadata(tiny_bundle).explain_activation
    assert activation is not None and explanations["starts_from_layer"] == activation.layer
    assert explanations["methods"][DEFAULT_METHOD] == [explanations["starts_from_layer"]]
