"""The audit trail (app/audit.py, app/api/audit.py): one JSON line per scoring request, whole under several
writers, in the documented schema, and never the token or the image.

`AuditLog.write` is also the API batch scoring and the PACS worker call; the HTTP lines are checked here on
in-process apps and over real HTTP in tests/integration/test_auth.py.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import multiprocessing
import os
import re
from dataclasses import fields

import httpx
import pytest

from app.audit import SCHEMA_VERSION, AuditLog, AuditRecord, image_fields
from app.keys import keys_file_line

SCHEMA_FIELDS = ["v", "time"] + [f.name for f in fields(AuditRecord) if f.name != "time"]
TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
RUN_ID = re.compile(r"^score-[0-9a-f]{32}$")


def read_lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="ascii").splitlines()]


def test_a_line_has_every_field_of_the_schema_in_order(tmp_path):
    audit = AuditLog(tmp_path / "audit.jsonl")
    assert audit.write(
        AuditRecord(endpoint="score", status=200, source="score", **image_fields(b"abc"), probability=0.25),
        label="NORMAL",
    )
    assert audit.write(endpoint="pacs:stow", status=422, source="pacs", code="not_a_chest_xray", key_id="pacs")
    audit.close()
    first, second = read_lines(tmp_path / "audit.jsonl")
    assert list(first) == SCHEMA_FIELDS and first["v"] == SCHEMA_VERSION and TIME.match(first["time"])
    assert first["image_sha256"] == hashlib.sha256(b"abc").hexdigest() and first["image_bytes"] == 3
    assert (first["label"], first["probability"], second["code"], second["label"]) == (
        "NORMAL", 0.25, "not_a_chest_xray", None,
    )  # fmt: skip
    assert oct((tmp_path / "audit.jsonl").stat().st_mode & 0o777) == "0o640"


def test_outside_text_is_cut_and_escaped_and_a_failed_write_does_not_raise(tmp_path, caplog):
    audit = AuditLog(tmp_path / "audit.jsonl")
    audit.write(endpoint="x" * 1000 + "\n\u00e9", status=200)
    (line,) = (tmp_path / "audit.jsonl").read_bytes().splitlines()
    assert len(json.loads(line)["endpoint"]) == 128 and line.isascii()
    audit.close()
    assert audit.write(endpoint="after close", status=200) is False  # logged, not raised
    assert "was not written" in caplog.text


def _writer(path: str, worker: int, lines: int) -> None:
    audit = AuditLog.open(path)
    assert audit is not None
    for i in range(lines):
        audit.write(endpoint=f"worker-{worker}", status=200, request_id=f"{worker}-{i}", probability=i / lines,
                    **image_fields(os.urandom(64)))  # fmt: skip


def test_several_processes_append_whole_lines(tmp_path):
    """Several uvicorn workers share one file: O_APPEND and one write per line keep every line whole."""
    path = tmp_path / "audit.jsonl"
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_writer, args=(str(path), w, 400)) for w in range(4)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(60)
        assert process.exitcode == 0
    lines = read_lines(path)  # every line parses
    assert len(lines) == 1600
    assert {line["request_id"] for line in lines} == {f"{w}-{i}" for w in range(4) for i in range(400)}


def test_an_unusable_path_fails_at_open(tmp_path):
    (tmp_path / "dir").mkdir()
    with pytest.raises(OSError):
        AuditLog(tmp_path / "dir")
    assert AuditLog.open(None) is None and AuditLog.open("") is None


def test_http_lines_for_answers_refusals_and_errors(make_app, sample_jpeg, tmp_path):
    keys = tmp_path / "keys"
    keys.write_text(keys_file_line("alice", "tok-alice") + "\n")
    app = make_app(api_keys_file=keys)
    app.state.audit = AuditLog(tmp_path / "audit.jsonl")
    auth = {"Authorization": "Bearer tok-alice", "X-Request-ID": "req-1"}

    async def calls() -> dict[str, httpx.Response]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            out = {"predict": await client.post("/predict", files={"file": ("a.jpg", sample_jpeg)}, headers=auth)}
            pid = out["predict"].json()["prediction_id"]
            out["png"] = await client.post("/explain?format=png&operating_point=youden", content=sample_jpeg,
                                           headers={**auth, "content-type": "image/jpeg"})  # fmt: skip
            out["cached"] = await client.get(f"/explain/{pid}?format=png", headers=auth)
            out["expired"] = await client.get("/explain/0123456789abcdef", headers=auth)
            out["no_key"] = await client.post("/predict", content=sample_jpeg, headers={"content-type": "image/jpeg"})
            out["bad_type"] = await client.post("/predict", content=b"x", headers={**auth, "content-type": "text/x"})
            out["model"] = await client.get("/model", headers=auth)  # not a scoring request: no line
            return out

    responses = asyncio.run(calls())
    app.state.audit.close()
    lines = read_lines(tmp_path / "audit.jsonl")
    assert [(line["endpoint"], line["status"], line["code"]) for line in lines] == [
        ("POST /predict", 200, None),
        ("POST /explain", 200, None),
        ("GET /explain/{prediction_id}", 200, None),
        ("GET /explain/{prediction_id}", 404, "prediction_not_found"),
        ("POST /predict", 401, "unauthorized"),
        ("POST /predict", 415, "unsupported_media_type"),
    ]
    predicted, png, cached, expired, no_key, bad_type = lines
    body = responses["predict"].json()
    digest = hashlib.sha256(sample_jpeg).hexdigest()
    assert predicted["request_id"] == "req-1" and predicted["key_id"] == "alice" and predicted["source"] == "http"
    assert (predicted["image_sha256"], predicted["image_bytes"]) == (digest, len(sample_jpeg))  # the file, not the form
    assert predicted["probability"] == body["probability"] and predicted["label"] == body["label"]
    assert predicted["prediction_id"] == body["prediction_id"] and predicted["image_format"] == "JPEG"
    assert predicted["model_sha256"] == body["model"]["sha256"] and predicted["policy"] == "off"
    assert predicted["operating_point"] == body["operating_point"] and predicted["accepted"] is True
    assert predicted["duration_ms"] > 0
    assert png["image_sha256"] == digest and png["operating_point"] == "youden" and png["method"]
    assert png["probability"] == pytest.approx(float(responses["png"].headers["X-Probability"]), abs=1e-6)
    # GET /explain/{id}: the digest and size of the upload its prediction was made from, kept with the prediction
    assert cached["prediction_id"] == body["prediction_id"] and cached["duration_ms"] > 0
    assert (cached["image_sha256"], cached["image_bytes"]) == (predicted["image_sha256"], predicted["image_bytes"])
    assert cached["image_sha256"] == digest and cached["image_bytes"] == len(sample_jpeg)
    assert cached["image_format"] == "JPEG"  # a PNG answer has no JSON body to read it from: the stored one
    assert expired["image_sha256"] is None and expired["image_bytes"] is None  # no prediction: no upload to name
    assert no_key["key_id"] is None and no_key["image_sha256"] is None and no_key["model_sha256"]
    assert bad_type["key_id"] == "alice"
    text = (tmp_path / "audit.jsonl").read_text()
    assert "tok-alice" not in text and base64.b64encode(sample_jpeg[:48]).decode() not in text


def test_batch_scoring_writes_a_line_per_file_through_the_hook(tiny_bundle, sample_jpeg, tmp_path):
    """`python -m app.score` passes `batch_row_hook` to `score_folder`: the same schema, `source` "score"."""
    from app.audit import batch_row_hook
    from pneumonia.batch import BatchOptions, score_folder
    from pneumonia.model import Model

    folder = tmp_path / "films"
    folder.mkdir()
    (folder / "PATIENT-NAME-IN-FILE-NAME.jpeg").write_bytes(sample_jpeg)
    (folder / "notes.png").write_bytes(b"not an image")
    audit = AuditLog(tmp_path / "audit.jsonl")
    model = Model.load(tiny_bundle, explain=False)
    score_folder(
        model, folder, tmp_path / "scores.csv", BatchOptions(policy="off"), on_row=batch_row_hook(audit, folder)
    )
    audit.close()
    text = (tmp_path / "audit.jsonl").read_text()
    answered, refused = sorted(read_lines(tmp_path / "audit.jsonl"), key=lambda line: line["status"])
    assert answered["source"] == "score" and answered["endpoint"] == "score" and answered["status"] == 200
    assert answered["image_sha256"] == hashlib.sha256(sample_jpeg).hexdigest() and answered["image_format"] == "JPEG"
    assert answered["label"] in ("NORMAL", "PNEUMONIA") and answered["model_sha256"] and answered["policy"] == "off"
    assert refused["status"] == 415 and refused["code"] == "unsupported_format" and refused["label"] is None
    assert refused["image_sha256"] == hashlib.sha256(b"not an image").hexdigest()
    # the latency (the file's time in its batch) and one request id per run, as the service has one per request
    assert answered["duration_ms"] > 0 and refused["duration_ms"] >= 0  # (written to 0.1 ms)
    assert RUN_ID.match(answered["request_id"]) and refused["request_id"] == answered["request_id"]
    assert "PATIENT-NAME" not in text and "notes" not in text  # paths are not written
