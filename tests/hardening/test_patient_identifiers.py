"""No patient identifier leaves a DICOM upload, except inside the DICOM results meant for the PACS.

DICOM files carry who the patient is: PatientName, PatientID, PatientBirthDate, AccessionNumber, institution and
physician names, addresses. Here every such attribute holds a unique sentinel, and the uploads go to a real
server run the way a hospital would run it: API keys, an audit log, a rate limit and the prediction store in a
real redis-server, logging at DEBUG (the app and uvicorn). Valid and invalid attribute values (pydicom's
validation warnings would quote an invalid one), every endpoint and policy, refusals and errors. Then every
output is searched for every sentinel:
- every response: status line, every header and the body (JSON, PNG), errors included;
- the server's log at DEBUG;
- the audit trail (which must still record each upload by its SHA-256);
- Redis: every key and value read back, and a dump (SAVE, uncompressed) read as bytes;
- the Prometheus metrics (labels).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import warnings

import httpx
import numpy as np
import pytest
import redis

from app.keys import keys_file_line
from tests.media import gray_of
from tests.redis_server import redis_server  # noqa: F401  (the fixture)
from tests.support import REPO_ROOT, copy_bundle

TOKEN = "tok-" + os.urandom(16).hex()
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SAMPLE = sorted((REPO_ROOT / "tests" / "data" / "samples" / "NORMAL").glob("*.jpeg"))[0]


def _tag(prefix: str, length: int = 12) -> str:
    return prefix + os.urandom(length // 2).hex().upper()


# attribute -> (value written, the part of it that must never appear anywhere)
NAME, GIVEN = _tag("QXNAME"), _tag("QXGIVEN")
SENTINELS: dict[str, tuple[str, str]] = {
    "PatientName": (f"{NAME}^{GIVEN}", NAME),
    "PatientID": (_tag("QXPID", 16), ""),
    "PatientBirthDate": ("19010203", "19010203"),
    "OtherPatientIDs": (_tag("QXOPID", 16), ""),
    "PatientAddress": (_tag("QXADDR", 16) + " Main Street", ""),
    "PatientTelephoneNumbers": (_tag("QXTEL", 8), ""),
    "AccessionNumber": (_tag("QXA", 12), ""),  # SH: 16 characters at most
    "StudyID": (_tag("QXS", 12), ""),
    "InstitutionName": (_tag("QXINST", 16) + " Hospital", ""),
    "InstitutionAddress": (_tag("QXIADDR", 16) + " Road", ""),
    "ReferringPhysicianName": (_tag("QXREF", 12) + "^Doctor", ""),
    "PerformingPhysicianName": (_tag("QXPERF", 12) + "^Doctor", ""),
    "OperatorsName": (_tag("QXOPER", 12) + "^Tech", ""),
    "StudyDescription": (_tag("QXSTUDY", 16) + " chest", ""),
    "SeriesDescription": (_tag("QXSERIES", 16) + " PA", ""),
}
FORBIDDEN = sorted({needle or value.split("^")[0].split(" ")[0] for value, needle in SENTINELS.values()} | {GIVEN})
INVALID_BIRTH_DATE = "03.02.1901"  # not a DICOM DA: pydicom's validation would quote it in a warning
# Not a DICOM AS (nnnD/W/M/Y, 4 characters) either, and searched for like the others. A unique sentinel rather
# than a 4-character fragment: 4 letters would turn up by chance in the megabytes of PNG and Redis bytes searched.
INVALID_AGE = _tag("QXAGE", 10)


def sentinel_dicom(*, pixels: np.ndarray | None, invalid: bool = False, rows: int | None = None) -> bytes:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.ViewPosition, ds.BodyPartExamined = "DX", "PA", "CHEST"
    ds.StudyDate = "19051231"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # writing an invalid value on purpose
        for attribute, (value, _) in SENTINELS.items():
            setattr(ds, attribute, value)
        if invalid:
            ds.PatientBirthDate = INVALID_BIRTH_DATE
            ds.PatientAge = INVALID_AGE
        if pixels is not None:
            pixels = pixels if rows is None else pixels[:rows, :rows]
            ds.Rows, ds.Columns = pixels.shape
            ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
            ds.PixelData = np.ascontiguousarray(pixels, dtype=np.uint8).tobytes()
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
    data = buffer.getvalue()
    for attribute, (value, _) in SENTINELS.items():
        if not (invalid and attribute == "PatientBirthDate"):
            assert value.encode() in data, attribute  # the sentinels really are in the upload
    assert (INVALID_AGE.encode() in data) == invalid
    return data


@pytest.fixture(scope="module")
def hospital(start_server, tiny_bundle, tmp_path_factory, redis_server):
    workdir = tmp_path_factory.mktemp("identifiers")
    keys = workdir / "api-keys"
    keys.write_text(keys_file_line("pacs-worker", TOKEN) + "\n")
    audit = workdir / "audit.jsonl"
    server = start_server(
        copy_bundle(tiny_bundle, workdir / "bundle"), uvicorn_args=("--log-level", "debug"),
        PNEUMONIA_LOG_LEVEL="DEBUG", PNEUMONIA_API_KEYS_FILE=str(keys), PNEUMONIA_AUDIT_LOG=str(audit),
        PNEUMONIA_RATE_LIMIT="1000/minute", PNEUMONIA_CACHE_URL=redis_server.url,
    )  # fmt: skip
    return server, audit


def exchanges(base_url: str) -> tuple[list[httpx.Response], list[httpx.Response], dict[str, bytes]]:
    """Every request a client might make with the sentinel files: the responses, the DICOM results (SR and
    Secondary Capture, whose bodies carry the study's identifiers for the PACS) and the uploads sent."""
    pixels = gray_of(SAMPLE)
    uploads = {
        "valid": sentinel_dicom(pixels=pixels),
        "invalid_values": sentinel_dicom(pixels=pixels, invalid=True),
        "no_pixels": sentinel_dicom(pixels=None),
        "too_small": sentinel_dicom(pixels=pixels, rows=8),
    }
    uploads["truncated"] = uploads["valid"][: len(uploads["valid"]) // 2]
    raw = {"content-type": "application/dicom"}
    responses: list[httpx.Response] = []
    dicom_results: list[httpx.Response] = []
    with httpx.Client(base_url=base_url, timeout=180) as client:

        def call(method: str, url: str, **kwargs) -> httpx.Response:
            response = client.request(method, url, **kwargs)
            assert response.status_code < 500, response.text[:500]
            responses.append(response)
            return response

        for name in ("valid", "invalid_values"):
            data = uploads[name]
            for policy in ("off", "warn", "refuse"):
                call("POST", f"/predict?input_check={policy}", files={"file": ("x.dcm", data)}, headers=AUTH)
            predicted = call("POST", "/predict", content=data, headers={**AUTH, **raw})
            assert predicted.status_code == 200 and predicted.json()["input"]["format"] == "DICOM"
            prediction_id = predicted.json()["prediction_id"]
            for fmt in ("json", "png"):
                assert call("POST", f"/explain?format={fmt}", content=data, headers={**AUTH, **raw}).status_code == 200
                assert call("GET", f"/explain/{prediction_id}?format={fmt}", headers=AUTH).status_code == 200
            call("POST", "/explain?input_check=warn&method=gradcam_pp", files={"file": ("y.dcm", data)}, headers=AUTH)
            for url in ("/predict?format=dicom-sr", "/explain?format=dicom-sc"):
                result = client.post(url, content=data, headers={**AUTH, **raw})
                assert result.status_code == 200 and result.headers["content-type"] == "application/dicom"
                dicom_results.append(result)
        for name in ("no_pixels", "too_small", "truncated"):
            refused = call("POST", "/predict", content=uploads[name], headers={**AUTH, **raw})
            assert 400 <= refused.status_code < 500, (name, refused.text)
        assert call("POST", "/predict", content=uploads["valid"], headers=raw).status_code == 401
        assert call("POST", "/explain?input_check=bogus", content=uploads["valid"], headers=raw).status_code == 401
        assert (
            call("POST", "/explain?input_check=bogus", content=uploads["valid"], headers={**AUTH, **raw}).status_code
            == 422
        )
        assert call("GET", "/metrics", headers=AUTH).status_code == 200
        assert call("GET", "/model", headers=AUTH).status_code == 200
    return responses, dicom_results, uploads


def redis_contents(redis_url: str, dump_dir) -> tuple[bytes, int]:
    """Every key and value in Redis, read back as bytes, plus an uncompressed dump; and how many predictions."""
    client = redis.Redis.from_url(redis_url)
    seen: list[bytes] = []
    predictions = 0
    for key in map(as_bytes, client.scan_iter(count=1000)):
        seen.append(key)
        kind = as_bytes(client.type(key)).decode()
        if kind == "string":
            seen.append(as_bytes(client.get(key) or b""))
            predictions += key.startswith(b"pneumonia:prediction:")
        elif kind == "list":
            seen.extend(map(as_bytes, client.lrange(key, 0, -1)))
        elif kind == "hash":
            seen.extend(as_bytes(field) + b"=" + as_bytes(value) for field, value in client.hgetall(key).items())
        elif kind == "zset":
            seen.extend(as_bytes(member) for member in client.zrange(key, 0, -1))
        elif kind == "set":
            seen.extend(map(as_bytes, client.smembers(key)))
    client.config_set("rdbcompression", "no")
    client.save()
    dump = (dump_dir / "dump.rdb").read_bytes()
    client.close()
    return b"\n".join(seen) + dump, predictions


def found_in(haystack: bytes, needles: list[str]) -> list[str]:
    lowered = haystack.lower()
    return [needle for needle in needles if needle.lower().encode() in lowered]


def test_dicom_identifiers_reach_no_log_audit_store_metric_or_response(hospital, redis_server):
    server, audit = hospital
    responses, dicom_results, uploads = exchanges(server.base_url)
    forbidden = [*FORBIDDEN, INVALID_BIRTH_DATE, "1901-02-03", INVALID_AGE]

    leaks = {}
    for response in responses:
        head = f"HTTP {response.status_code}\n" + "\n".join(f"{k}: {v}" for k, v in response.headers.multi_items())
        where = f"{response.request.method} {response.request.url.path}?{response.request.url.query.decode()}"
        if found := found_in(head.encode() + b"\n" + response.content, forbidden):
            leaks[f"response to {where}"] = found
    for result in dicom_results:  # meant for the PACS: the body is the study's, the headers are not
        head = "\n".join(f"{k}: {v}" for k, v in result.headers.multi_items())
        if found := found_in(head.encode(), forbidden):
            leaks[f"headers of {result.request.url.path}?{result.request.url.query.decode()}"] = found
        assert SENTINELS["PatientID"][0].encode() in result.content  # filed with its study, as it must be
    if found := found_in(server.log().encode(), forbidden):
        leaks["server log (DEBUG)"] = found
    audit_text = audit.read_bytes()
    if found := found_in(audit_text, forbidden):
        leaks["audit trail"] = found
    stored, predictions = redis_contents(redis_server.url, redis_server.workdir)
    if found := found_in(stored, forbidden):
        leaks["redis"] = found
    metrics = next(r for r in responses if r.request.url.path == "/metrics").content
    if found := found_in(metrics, forbidden):
        leaks["metrics"] = found
    assert not leaks, f"patient identifiers found: {json.dumps(leaks, indent=1)}"

    # ... and the checks were not vacuous: the uploads were scored, logged, stored and audited
    log = server.log()
    assert "POST /explain 200" in log and "Invalid HTTP" not in log
    assert predictions >= 2 and b"pneumonia:ratelimit" in stored
    lines = [json.loads(line) for line in audit_text.splitlines()]
    for name in ("valid", "invalid_values"):
        digest = hashlib.sha256(uploads[name]).hexdigest()
        answered = [ln for ln in lines if ln["image_sha256"] == digest and ln["status"] == 200]
        assert len(answered) >= 5 and {ln["image_format"] for ln in answered} == {"DICOM"}
        assert all(ln["key_id"] == "pacs-worker" for ln in answered)
    assert {ln["code"] for ln in lines} >= {None, "unauthorized", "invalid_request"}
    assert TOKEN.encode() not in audit_text and TOKEN not in log


def as_bytes(value: object) -> bytes:
    """A Redis reply as bytes (the client here decodes nothing; redis-py's reply types are wider)."""
    assert isinstance(value, bytes | str), f"unexpected Redis reply {value!r}"
    return value if isinstance(value, bytes) else value.encode()
