"""Who may call a real `uvicorn app.main:app`: API keys, the rate limit, the audit trail and the start-up rule.

One server for the module, as an operator would run it next to a PACS: a keys file, an audit log,
`PNEUMONIA_RATE_LIMIT=20/minute` counted in a real redis-server shared with the prediction store. Each test
uses its own key so that their rate-limit budgets do not mix. The start-up tests run uvicorn processes that
must stop before loading any model.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest
import redis

from app.keys import keys_file_line
from pneumonia.bundle import RESEARCH_DISCLAIMER
from tests.support import REPO_ROOT, copy_bundle, free_port

RATE = 20
KEY_IDS = ("reader", "dicom", "burst", "other", "query", "metrics")
TOKENS = {key_id: f"tok-{key_id}-{os.urandom(12).hex()}" for key_id in KEY_IDS}
PROTECTED = [
    ("POST", "/predict"),
    ("POST", "/explain"),
    ("GET", "/explain/0123456789abcdef0123456789abcdef"),
    ("GET", "/model"),
    ("GET", "/model/card"),
    ("GET", "/metrics"),
]


def bearer(key_id: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[key_id]}"}


@pytest.fixture(scope="module")
def setup(start_server, tiny_bundle, tmp_path_factory, redis_server):
    workdir = tmp_path_factory.mktemp("auth")
    keys = workdir / "api-keys"
    keys.write_text("# issue 22 test keys\n" + "".join(keys_file_line(k, t) + "\n" for k, t in TOKENS.items()))
    audit = workdir / "audit.jsonl"
    bundle = copy_bundle(tiny_bundle, workdir / "bundle")
    server = start_server(
        bundle, PNEUMONIA_API_KEYS_FILE=str(keys), PNEUMONIA_AUDIT_LOG=str(audit),
        PNEUMONIA_RATE_LIMIT=f"{RATE}/minute", PNEUMONIA_CACHE_URL=redis_server.url,
    )  # fmt: skip
    with httpx.Client(base_url=server.base_url, timeout=120) as client:
        yield server, client, audit


def dicom_bytes(path) -> bytes:
    """A sample X-ray as a DICOM file (8-bit MONOCHROME2), as a PACS would send it."""
    from PIL import Image
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian, generate_uid

    pixels = np.asarray(Image.open(path).convert("L"), dtype=np.uint8)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.ViewPosition, ds.BodyPartExamined = "DX", "PA", "CHEST"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = pixels.tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def assert_unauthorized(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["WWW-Authenticate"] == "Bearer"
    body = response.json()
    assert body["error"]["code"] == "unauthorized" and body["disclaimer"] == RESEARCH_DISCLAIMER


def audit_lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_no_key_and_a_wrong_key_get_401_everywhere_a_key_is_needed(setup, sample_images):
    server, client, _ = setup
    jpeg = sample_images["NORMAL"][0].read_bytes()
    for method, path in PROTECTED:
        upload = {"files": {"file": ("x.jpeg", jpeg)}} if method == "POST" else {}
        for headers in ({}, {"Authorization": "Bearer not-a-key"}, {"Authorization": f"Basic {TOKENS['reader']}"}):
            response = client.request(method, path, headers=headers, **upload)
            assert_unauthorized(response)
            assert TOKENS["reader"] not in response.text and "not-a-key" not in response.text


def test_probes_the_page_and_the_docs_need_no_key(setup):
    _, client, _ = setup
    for path in ("/health/live", "/health/ready", "/", "/static/app.js", "/static/app.css", "/docs", "/redoc",
                 "/openapi.json", "/static/vendor/swagger-ui/swagger-ui-bundle.js"):  # fmt: skip
        assert client.get(path).status_code == 200, path
    schema = client.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["APIKey"] == {
        **schema["components"]["securitySchemes"]["APIKey"], "type": "http", "scheme": "bearer",
    }  # fmt: skip
    assert schema["paths"]["/predict"]["post"]["security"] == [{"APIKey": []}]  # required: keys are configured
    assert "security" not in schema["paths"]["/health/live"]["get"]


def test_a_valid_key_scores_jpeg_and_dicom_and_the_audit_names_key_and_image(setup, sample_images):
    server, client, audit = setup
    jpeg = sample_images["PNEUMONIA"][0].read_bytes()
    dicom = dicom_bytes(sample_images["NORMAL"][0])
    predicted = client.post("/predict", files={"file": ("x.jpeg", jpeg)}, headers=bearer("reader"))
    assert predicted.status_code == 200, predicted.text
    assert predicted.json()["input"]["format"] == "JPEG"
    answers = {}
    for path in ("/predict", "/explain"):
        response = client.post(path, content=dicom, headers={**bearer("dicom"), "content-type": "application/dicom"})
        assert response.status_code == 200, response.text
        answers[path] = response.json()
        assert answers[path]["input"]["format"] == "DICOM"
    cached = client.get(f"/explain/{answers['/predict']['prediction_id']}", headers=bearer("dicom"))
    assert cached.status_code == 200 and cached.json()["heatmap_format"] == "png"
    assert client.get("/model", headers=bearer("reader")).status_code == 200
    assert client.get("/model/card", headers=bearer("reader")).status_code == 200

    model_sha = client.get("/health/ready").json()["model"]["sha256"]
    lines = audit_lines(audit)
    by_request = {(line["key_id"], line["endpoint"], line["image_sha256"]): line for line in lines}
    jpeg_line = by_request[("reader", "POST /predict", hashlib.sha256(jpeg).hexdigest())]
    assert jpeg_line["status"] == 200 and jpeg_line["image_bytes"] == len(jpeg)
    assert jpeg_line["probability"] == predicted.json()["probability"] and jpeg_line["model_sha256"] == model_sha
    for endpoint in ("POST /predict", "POST /explain"):
        line = by_request[("dicom", endpoint, hashlib.sha256(dicom).hexdigest())]
        assert line["image_format"] == "DICOM" and line["label"] in ("NORMAL", "PNEUMONIA")
    cached_line = [ln for ln in lines if ln["endpoint"] == "GET /explain/{prediction_id}" and ln["status"] == 200]
    assert cached_line[-1]["prediction_id"] == answers["/predict"]["prediction_id"]
    assert not any(line["endpoint"] in ("GET /model", "GET /model/card") for line in lines)  # scoring only
    text = audit.read_text()
    assert not any(token in text for token in TOKENS.values())
    assert not any(token in server.log() for token in TOKENS.values())


def test_forty_quick_requests_hit_the_limit_with_retry_after_per_key(setup, sample_images, redis_server):
    _, client, audit = setup
    jpeg = sample_images["NORMAL"][1].read_bytes()
    statuses, refused = [], []
    for _ in range(2 * RATE):
        response = client.post("/predict", content=jpeg, headers={**bearer("burst"), "content-type": "image/jpeg"})
        statuses.append(response.status_code)
        if response.status_code == 429:
            refused.append(response)
    assert statuses[:RATE] == [200] * RATE and statuses[RATE:] == [429] * RATE
    for response in refused:
        body = response.json()
        assert body["error"]["code"] == "rate_limited" and body["disclaimer"] == RESEARCH_DISCLAIMER
        assert 1 <= int(response.headers["Retry-After"]) <= 60
    other = client.post("/predict", content=jpeg, headers={**bearer("other"), "content-type": "image/jpeg"})
    assert other.status_code == 200  # another key is not affected
    limited = [ln for ln in audit_lines(audit) if ln["key_id"] == "burst" and ln["code"] == "rate_limited"]
    assert len(limited) == RATE and all(ln["status"] == 429 for ln in limited)
    stored = [
        key.decode() if isinstance(key, bytes) else key
        for key in redis.Redis.from_url(redis_server.url).keys("pneumonia:ratelimit*")
    ]
    assert stored and not any("burst" in key for key in stored)  # counted in the shared Redis, by digest


def test_a_token_in_the_query_string_is_refused(setup, sample_images):
    server, client, _ = setup
    jpeg = sample_images["NORMAL"][0].read_bytes()
    for name in ("token", "access_token", "api_key", "API-Key"):
        response = client.post(
            f"/predict?{name}={TOKENS['query']}",
            content=jpeg,
            headers={**bearer("query"), "content-type": "image/jpeg"},
        )
        assert response.status_code == 400, response.text
        assert response.json()["error"]["code"] == "token_in_query"
        assert TOKENS["query"] not in response.text
    assert client.get(f"/model?access_token={TOKENS['query']}").status_code == 400


def test_metrics_need_a_key_and_carry_no_key_ids(setup):
    _, client, _ = setup
    assert_unauthorized(client.get("/metrics"))
    response = client.get("/metrics", headers=bearer("metrics"))
    assert response.status_code == 200 and "pneumonia_http_requests_total" in response.text
    assert not any(key_id in response.text for key_id in ("reader", "dicom", "burst"))


def start_uvicorn(*args: str, before_model: bool = True, **env: str) -> tuple[int, str]:
    """A uvicorn process that must stop on its own (before the model loads); its exit code and output."""
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "uvicorn", "app.main:app", "--port", str(free_port()), *args],
        cwd=REPO_ROOT, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **env}, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    output = result.stdout + result.stderr
    if before_model:
        assert "loading model bundle" not in output, "the check must come before the model load"
    assert time.monotonic() - started < 60
    return result.returncode, output


@pytest.mark.parametrize("how", ["--host", "UVICORN_HOST"])
def test_start_up_refuses_a_public_address_without_keys(how, tmp_path):
    args, env = (("--host", "0.0.0.0"), {}) if how == "--host" else ((), {"UVICORN_HOST": "0.0.0.0"})
    code, output = start_uvicorn(*args, before_model=True, **env, PNEUMONIA_MODEL_DIR=str(tmp_path))
    assert code != 0
    (line,) = [ln for ln in output.splitlines() if "refusing to start" in ln]
    assert "0.0.0.0" in line and "PNEUMONIA_API_KEYS_FILE" in line and "PNEUMONIA_ALLOW_ANONYMOUS=true" in line


def test_start_up_with_the_explicit_flag_or_keys_passes_the_rule(tmp_path):
    """Past the rule, start-up goes on to the model: a missing bundle stops it there instead (nothing binds)."""
    missing = str(tmp_path / "no-bundle")
    code, output = start_uvicorn(
        "--host", "0.0.0.0", before_model=False, PNEUMONIA_MODEL_DIR=missing, PNEUMONIA_ALLOW_ANONYMOUS="true"
    )
    assert code != 0 and "model bundle directory does not exist" in output and "PNEUMONIA_ALLOW_ANONYMOUS" in output
    keys = tmp_path / "keys"
    keys.write_text(keys_file_line("a", "b") + "\n")
    code, output = start_uvicorn(
        "--host", "0.0.0.0", before_model=False, PNEUMONIA_MODEL_DIR=missing, PNEUMONIA_API_KEYS_FILE=str(keys)
    )
    assert code != 0 and "model bundle directory does not exist" in output and "no API keys" not in output


def test_start_up_refuses_a_missing_or_broken_keys_file(tmp_path):
    code, output = start_uvicorn("--host", "127.0.0.1", PNEUMONIA_API_KEYS_FILE=str(tmp_path / "missing"))
    assert code != 0 and "refusing to start: cannot read the API keys file" in output
    keys = tmp_path / "keys"
    keys.write_text("reader:the-token-itself\n")
    code, output = start_uvicorn("--host", "127.0.0.1", PNEUMONIA_API_KEYS_FILE=str(keys))
    assert code != 0 and "line 1" in output and "the-token-itself" not in output
