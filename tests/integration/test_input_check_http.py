"""The input check over real HTTP, on the shipped bundle (its detector is fitted on the real training split).

Contract (issue 9): every 200 carries `input_check`; under `refuse` (the default) an image that is not a
frontal chest X-ray gets 422 `not_a_chest_xray` with the reason and the verdict; under `warn` a 200 with
accepted=false and the reasons in `warnings`; `off` skips the check; a rotated X-ray is turned back and says
"rotated"; a schema-1 bundle serves with the detector "unavailable".
"""

from __future__ import annotations

import json
import shutil

import httpx
import numpy as np
import pytest
from PIL import Image, ImageDraw

from pneumonia.bundle import METADATA_FILENAME, RESEARCH_DISCLAIMER
from tests.media import gray_of, png
from tests.support import SHIPPED_BUNDLE


def _shipped_has_check() -> bool:
    return json.loads((SHIPPED_BUNDLE / METADATA_FILENAME).read_text()).get("input_check") is not None


pytestmark = pytest.mark.skipif(not _shipped_has_check(), reason="the shipped bundle has no input check")


@pytest.fixture(scope="module")
def server(start_server):
    return start_server(SHIPPED_BUNDLE, PNEUMONIA_EXPLAIN_ENABLED="false", PNEUMONIA_INPUT_CHECK="refuse")


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.base_url, timeout=60) as client:
        yield client


def post(client, data: bytes, path: str = "/predict", **params) -> httpx.Response:
    return client.post(path, params=params, files={"file": ("upload.png", data, "application/octet-stream")})


def refused(response: httpx.Response, reason_word: str) -> dict:
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["error"]["code"] == "not_a_chest_xray"
    assert reason_word in body["error"]["message"]
    assert body["input_check"]["accepted"] is False
    assert any(reason_word in r for r in body["input_check"]["reasons"])
    assert body["disclaimer"] == RESEARCH_DISCLAIMER
    assert "label" not in body and "probability" not in body  # a refused image never gets a label
    return body


def pixels_png(pixels: np.ndarray) -> bytes:
    return png(Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)))


def document() -> bytes:
    image = Image.new("L", (600, 700), 250)
    draw = ImageDraw.Draw(image)
    for row in range(25):
        draw.text((20, 20 + 26 * row), "Findings: lungs are clear. No acute process. Invoice 2231 due.", fill=10)
    return png(image)


@pytest.fixture(scope="module")
def xrays(sample_images) -> dict[str, np.ndarray]:
    return {path.name: gray_of(path) for paths in sample_images.values() for path in paths}


def test_sample_xrays_are_accepted_upright(client, xrays):
    for name, gray in xrays.items():
        body = post(client, pixels_png(gray)).json()
        check = body["input_check"]
        assert check["accepted"] is True, (name, check)
        assert check["detector"] == "available" and check["policy"] == "refuse"
        assert check["rotated_back_degrees"] == 0 and check["ood_score"] <= check["ood_threshold"]


@pytest.mark.parametrize("turns", [1, 2, 3])
def test_a_rotated_xray_is_turned_back_and_keeps_its_label(client, xrays, turns):
    for name, gray in xrays.items():
        upright = post(client, pixels_png(gray)).json()
        response = post(client, pixels_png(np.rot90(gray, turns)))
        if response.status_code == 422:  # refusing is allowed; answering with a flipped label is not
            continue
        check = response.json()["input_check"]
        assert check["rotated_back_degrees"] == 90 * ((-turns) % 4), (name, check)
        assert any("rotated" in r for r in check["reasons"])
        assert any("rotated" in w for w in response.json()["warnings"])
        assert response.json()["label"] == upright["label"], name
        assert abs(response.json()["probability"] - upright["probability"]) < 1e-6


def test_an_inverted_xray_is_refused_without_a_claim_about_its_orientation(client, xrays):
    """Every committed sample, inverted: refused as a negative, and no reason says it was rotated or mirrored
    (the orientation of a negative cannot be read, so nothing is turned back)."""
    for gray in xrays.values():
        check = refused(post(client, pixels_png(255 - gray)), "inverted")["input_check"]
        assert not any("rotated" in r or "mirrored" in r for r in check["reasons"]), check["reasons"]
        assert check["rotated_back_degrees"] == 0 and check["mirrored"] is False


def test_text_is_refused(client):
    body = refused(post(client, document()), "noise")
    assert body["input_check"]["measurements"]["noise_ratio"] > 0.45


def test_a_colour_picture_is_refused(client):
    rng = np.random.default_rng(0)
    blocks = np.zeros((256, 256, 3), np.uint8)
    for i in range(4):
        blocks[64 * i : 64 * (i + 1)] = rng.integers(0, 256, 3)
    refused(post(client, png(Image.fromarray(blocks))), "colour")


def test_a_blank_image_is_refused(client):
    refused(post(client, pixels_png(np.full((300, 300), 128.0))), "near-constant")


def test_noise_is_refused(client):
    refused(post(client, pixels_png(np.random.default_rng(1).integers(0, 256, (256, 256)))), "noise")


def test_an_extreme_aspect_ratio_is_refused(client, xrays):
    strip = next(iter(xrays.values()))[:40]  # a thin horizontal band of a real X-ray
    refused(post(client, pixels_png(np.asarray(Image.fromarray(strip).resize((400, 100))))), "aspect")


def test_a_smooth_gradient_passes_cheap_checks_but_not_the_detector(client):
    yy, xx = np.mgrid[0:256, 0:256]
    body = refused(post(client, pixels_png(30 + 0.8 * xx + 0.1 * yy)), "out-of-distribution")
    assert body["input_check"]["ood_score"] > body["input_check"]["ood_threshold"]


def test_warn_answers_with_the_reason_in_warnings(client):
    response = post(client, document(), input_check="warn")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["input_check"]["accepted"] is False and body["input_check"]["policy"] == "warn"
    assert body["label"] in ("NORMAL", "PNEUMONIA")
    assert any("noise" in w for w in body["warnings"])


def test_off_skips_the_check(client):
    body = post(client, document(), input_check="off").json()
    assert body["input_check"]["detector"] == "off" and body["input_check"]["accepted"] is True


def test_an_unknown_policy_is_a_422(client):
    response = post(client, document(), input_check="maybe")
    assert response.status_code == 422 and response.json()["error"]["code"] == "invalid_request"


def test_environment_sets_the_default_policy(start_server):
    server = start_server(SHIPPED_BUNDLE, PNEUMONIA_EXPLAIN_ENABLED="false", PNEUMONIA_INPUT_CHECK="warn")
    with httpx.Client(base_url=server.base_url, timeout=60) as client:
        body = post(client, document()).json()
        assert body["input_check"]["policy"] == "warn" and body["input_check"]["accepted"] is False
        assert post(client, document(), input_check="refuse").status_code == 422


def test_a_schema_1_bundle_serves_without_pretending(start_server, tmp_path, xrays):
    bundle = shutil.copytree(SHIPPED_BUNDLE, tmp_path / "old")
    metadata = json.loads((bundle / METADATA_FILENAME).read_text())
    metadata["schema_version"] = 1
    del metadata["input_check"]
    (bundle / METADATA_FILENAME).write_text(json.dumps(metadata))
    (bundle / "input_check.npz").unlink()
    server = start_server(bundle, PNEUMONIA_EXPLAIN_ENABLED="false", PNEUMONIA_INPUT_CHECK="refuse")
    with httpx.Client(base_url=server.base_url, timeout=60) as client:
        body = post(client, pixels_png(next(iter(xrays.values())))).json()
        check = body["input_check"]
        assert check["detector"] == "unavailable" and check["ood_score"] is None
        assert "no fitted input check" in check["note"]
        assert client.get("/model").json()["input_check"] is None
        # the cheap checks still run: they need no fitted parameters
        refused(post(client, pixels_png(np.full((300, 300), 128.0))), "near-constant")


def test_a_tampered_detector_stops_the_service(tmp_path):
    from pneumonia.bundle import BundleError, read_metadata
    from pneumonia.input_check import load_checker

    bundle = shutil.copytree(SHIPPED_BUNDLE, tmp_path / "tampered")
    with (bundle / "input_check.npz").open("ab") as handle:
        handle.write(b"\0")
    with pytest.raises(BundleError, match="checksum"):
        load_checker(bundle, read_metadata(bundle))


def test_model_card_describes_the_check(client):
    card = client.get("/model").json()
    assert card["input_check"]["validation_acceptance"] >= 0.99
    assert card["input_check"]["threshold"] > 0
