"""The HTTP side of the audit trail: one `AuditRecord` per scoring request, written when its response is sent.

`AuditMiddleware` (pure ASGI) wraps `POST /predict`, `POST /explain` and `GET /explain/{id}` whenever an
audit log is open (`app.state.audit`). It sees every outcome, including those answered before a route runs
(413 from the upload limit, 401, 429) and unhandled errors (500). What it records comes from:
- the request: method and path (the route template, the id of GET /explain/{id}), the request id
  (RequestContextMiddleware puts it in `scope["state"]`), and the query's operating point;
- the dependencies: the key id (app/api/auth.py) and the upload's SHA-256 and size (`note_upload`, called by
  app/api/uploads.py once the file's bytes are in memory: the image itself, not the multipart envelope); the
  routes hand them (`noted_upload`) to the service, which keeps them with the stored prediction, and
  GET /explain/{id} records those of the upload its prediction was made from (`note_stored_upload`);
- the response: status, error code, and for an answer the probability, label, threshold, operating point,
  prediction id, input check verdict and model digest (the JSON body, or the X-* headers of ?format=png).
Nothing else is read: no file name, no DICOM attribute, no pixel; the token never reaches this module.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

from fastapi import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.audit import AuditLog, AuditRecord, image_fields

SCOPE_KEY = "pneumonia.audit"
AUDITED = (
    ("POST", re.compile(r"^/predict/?$"), "POST /predict"),
    ("POST", re.compile(r"^/explain/?$"), "POST /explain"),
    ("GET", re.compile(r"^/explain/([^/]+)$"), "GET /explain/{prediction_id}"),
)
# A response body read back for its fields: an /explain JSON with its map is a few hundred KiB.
MAX_PARSED_BODY = 16 * 1024 * 1024


def audit_record(request: Request) -> AuditRecord | None:
    """The record of this request when it is being audited (dependencies add what they know to it)."""
    return request.scope.get(SCOPE_KEY)


def note_upload(request: Request, data: bytes) -> None:
    record = audit_record(request)
    if record is not None:
        fields = image_fields(data)
        record.image_sha256, record.image_bytes = fields["image_sha256"], fields["image_bytes"]
        record.image_format = sniff_format(data)  # refusals too; an answer's `input.format` confirms it


def noted_upload(request: Request) -> dict[str, Any]:
    """`image_sha256` and `image_bytes` as `note_upload` recorded them (for `ModelService.analyse`), or {} when
    this request is not audited (nothing is hashed for nothing)."""
    record = audit_record(request)
    if record is None or record.image_sha256 is None:
        return {}
    return {"image_sha256": record.image_sha256, "image_bytes": record.image_bytes}


def note_stored_upload(
    request: Request, image_sha256: str | None, image_bytes: int | None, image_format: str | None
) -> None:
    """GET /explain/{id}: the digest, size and format of the upload the stored prediction was made from (the
    digest and size are None when it was stored without them: by a process keeping no audit log, or by an
    older version). The format is recorded for every answer, PNG ones (no JSON body) included."""
    record = audit_record(request)
    if record is None:
        return
    record.image_format = image_format
    if image_sha256 is not None:
        record.image_sha256, record.image_bytes = image_sha256, image_bytes


def sniff_format(data: bytes) -> str | None:
    """JPEG, PNG or DICOM by their magic bytes (what the decoder will try), else None."""
    if data[128:132] == b"DICM":
        return "DICOM"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    return None


def audited_endpoint(method: str, path: str) -> tuple[str, str | None] | None:
    """(endpoint name, prediction id from the path) for an audited request, else None."""
    for wanted, pattern, name in AUDITED:
        match = pattern.match(path)
        if method == wanted and match:
            return name, (match.group(1)[:64] if match.groups() else None)
    return None


class AuditMiddleware:
    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        audit: AuditLog | None = getattr(getattr(scope.get("app"), "state", None), "audit", None)
        found = audited_endpoint(scope["method"], scope.get("path", "")) if audit is not None else None
        if audit is None or found is None:
            await self.app(scope, receive, send)
            return
        endpoint, path_id = found
        record = AuditRecord(
            endpoint=endpoint, request_id=scope.get("state", {}).get("request_id"), prediction_id=path_id
        )
        scope[SCOPE_KEY] = record
        response = _Response()
        started = time.perf_counter()

        async def capture(message: Message) -> None:
            response.observe(message)
            await send(message)

        try:
            await self.app(scope, receive, capture)
        except BaseException:
            response.status = response.status or 500
            record.code = record.code or "internal_error"
            raise
        finally:
            record.duration_ms = (time.perf_counter() - started) * 1000
            response.fill(record, scope)
            audit.write(record)


class _Response:
    def __init__(self) -> None:
        self.status: int | None = None
        self.headers: dict[str, str] = {}
        self.body = bytearray()
        self.json = False

    def observe(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = int(message["status"])
            self.headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in message.get("headers", [])}
            self.json = self.headers.get("content-type", "").startswith("application/json")
        elif message["type"] == "http.response.body" and self.json and len(self.body) < MAX_PARSED_BODY:
            self.body.extend(message.get("body", b""))

    def fill(self, record: AuditRecord, scope: Scope) -> None:
        record.status = self.status
        body = _parse(self.body) if self.json else None
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            record.code = str(body["error"].get("code"))[:64]
            _input_check(record, body.get("input_check"))
        elif isinstance(body, dict):
            _answer(record, body)
        elif self.headers.get("content-type", "").startswith(("image/png", "application/dicom")):
            _png_answer(record, self.headers)
        if record.operating_point is None and record.status == 200:
            record.operating_point = _query_value(scope, "operating_point")
        if record.model_sha256 is None:
            _model_fields(record, scope)


def _parse(body: bytearray) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return None


def _number(value: Any) -> float | None:
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _input_check(record: AuditRecord, check: Any) -> None:
    if isinstance(check, dict):
        accepted = check.get("accepted")
        record.accepted = accepted if isinstance(accepted, bool) else None
        record.policy = str(check["policy"])[:16] if check.get("policy") else None


def _answer(record: AuditRecord, body: dict[str, Any]) -> None:
    record.probability = _number(body.get("probability"))
    record.threshold = _number(body.get("threshold"))
    for name in ("label", "operating_point", "prediction_id", "method"):
        if isinstance(body.get(name), str):
            setattr(record, name, body[name][:64])
    if isinstance(body.get("input"), dict) and isinstance(body["input"].get("format"), str):
        record.image_format = body["input"]["format"][:16]
    model = body.get("model")
    if isinstance(model, dict):
        record.model_name, record.model_version, record.model_sha256 = (
            str(model.get(k))[:128] if model.get(k) is not None else None for k in ("name", "version", "sha256")
        )
    _input_check(record, body.get("input_check"))


def _png_answer(record: AuditRecord, headers: dict[str, str]) -> None:
    record.probability = _number(headers.get("x-probability"))
    record.threshold = _number(headers.get("x-threshold"))
    record.label = headers.get("x-label", "")[:64] or None
    record.prediction_id = headers.get("x-prediction-id", "")[:64] or record.prediction_id
    record.method = headers.get("x-method", "")[:64] or None
    if "x-input-check" in headers:
        _input_check(record, _parse(bytearray(headers["x-input-check"].encode("latin-1"))))


def _query_value(scope: Scope, name: str) -> str | None:
    from urllib.parse import parse_qs

    values = parse_qs(scope.get("query_string", b"").decode("latin-1")).get(name)
    return values[0][:64] if values else None


def _model_fields(record: AuditRecord, scope: Scope) -> None:
    """The served model, for lines whose response does not name it (errors): name, version, ONNX digest."""
    service = getattr(getattr(scope.get("app"), "state", None), "service", None)
    metadata = getattr(service, "metadata", None)
    if metadata is None:
        return
    record.model_name = getattr(metadata, "name", None)
    record.model_version = getattr(metadata, "version", None)
    record.model_sha256 = getattr(getattr(metadata, "checksums", None), "onnx_sha256", None)
