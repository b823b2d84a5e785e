"""The audit trail: one JSON line per scoring request, appended to `PNEUMONIA_AUDIT_LOG`.

Who scored what, when, with which model and with what answer; never the image, the token or a patient
identifier. The HTTP service writes a line for every `POST /predict`, `POST /explain` and
`GET /explain/{id}` (app/api/audit.py), refusals and errors included; the PACS worker (app/pacs.py) calls
`AuditLog.write` itself, and batch scoring passes `batch_row_hook(audit, root)` as `score_folder`'s `on_row`:

    audit = AuditLog.open(settings.audit_log)          # None when PNEUMONIA_AUDIT_LOG is unset
    if audit is not None:
        audit.write(AuditRecord(source="pacs", endpoint="pacs:stow", status=200, key_id="pacs-worker",
                                **image_fields(data), probability=p, label=label, ...))

Append-only and safe under several workers and processes: the file is opened with O_APPEND and every line
goes out in one `os.write` (the kernel appends each write whole, at the end, even with several writers).
The schema (`SCHEMA_VERSION`, field by field) is in docs/security.md.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

log = logging.getLogger("app.audit")

SCHEMA_VERSION = 1
FILE_MODE = 0o640
# Fields that may carry text from outside the service are cut to this length (codes and ids are far shorter).
MAX_TEXT = 128


@dataclass
class AuditRecord:
    """One line. Every field is a fact about the request, never its content: no pixels, no file name, no
    token, no DICOM attribute. `None` means not known or not applicable (written as null)."""

    endpoint: str  # "POST /predict", "POST /explain", "GET /explain/{prediction_id}", "score", "pacs:..."
    status: int | None = None  # the HTTP status answered (batch/PACS: the status /predict would answer)
    source: str = "http"  # http | score | pacs
    request_id: str | None = None
    key_id: str | None = None  # the API key's id; null when anonymous
    code: str | None = None  # the error code when refused (unauthorized, rate_limited, not_a_chest_xray, ...)
    image_sha256: str | None = None  # of the uploaded file's bytes, as received
    image_bytes: int | None = None
    image_format: str | None = None  # JPEG | PNG | DICOM, as detected
    prediction_id: str | None = None
    model_name: str | None = None
    model_version: str | None = None
    model_sha256: str | None = None  # the bundle's ONNX digest: which exact model answered
    operating_point: str | None = None
    threshold: float | None = None
    policy: str | None = None  # input check policy: refuse | warn | off
    accepted: bool | None = None  # the input check's verdict
    label: str | None = None
    probability: float | None = None
    method: str | None = None  # the explanation method, for /explain
    duration_ms: float | None = None
    time: str | None = None  # filled at write time: UTC, ISO 8601 with milliseconds and Z

    def to_json(self) -> str:
        fields = dataclasses.asdict(self)
        for name, value in fields.items():
            if isinstance(value, str) and len(value) > MAX_TEXT:
                fields[name] = value[:MAX_TEXT]
        if fields["duration_ms"] is not None:
            fields["duration_ms"] = round(float(fields["duration_ms"]), 1)
        line = {"v": SCHEMA_VERSION, "time": fields.pop("time") or utc_now()}
        line.update(fields)
        return json.dumps(line, ensure_ascii=True, separators=(",", ":"), allow_nan=False)


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def image_fields(data: bytes) -> dict[str, Any]:
    """`image_sha256` and `image_bytes` of an upload, for an `AuditRecord`."""
    return {"image_sha256": hashlib.sha256(data).hexdigest(), "image_bytes": len(data)}


def new_run_id(source: str) -> str:
    """The `request_id` of the lines of a run that has no HTTP request: `score-` or `pacs-` and 32 hex digits,
    one per `python -m app.score` run or PACS worker pass, so the lines of one run can be found together."""
    return f"{source}-{uuid.uuid4().hex}"


def batch_row_hook(
    audit: AuditLog, root: Path, key_id: str | None = None, run_id: str | None = None
) -> Callable[[dict[str, str], Any], None]:
    """`on_row` for `pneumonia.batch.score_folder` (`python -m app.score`): one line per file, `source` "score",
    `request_id` the run's id (`run_id`, or a new one: `new_run_id("score")`), `duration_ms` the file's time in
    its batch (`ScoredItem.seconds`).

    The file is read again for its digest (the batch keeps no bytes); its path is never written."""
    run_id = run_id or new_run_id("score")

    def write(row: dict[str, str], item: Any) -> None:
        try:
            fields = image_fields((root / row["path"]).read_bytes())
        except OSError:
            fields = {}
        prediction, error = getattr(item, "prediction", None), getattr(item, "error", None)
        check = getattr(prediction, "input_check", None) or getattr(error, "check", None)
        seconds = getattr(item, "seconds", None)
        record = AuditRecord(
            endpoint="score", source="score", key_id=key_id, request_id=run_id, **fields,
            duration_ms=seconds * 1000 if seconds is not None else None,
            status=200 if prediction is not None else getattr(error, "status_code", None),
            code=str(error.code) if error is not None else None,
            policy=getattr(check, "policy", None), accepted=getattr(check, "accepted", None),
        )  # fmt: skip
        if prediction is not None:
            model = prediction.model
            record.model_name, record.model_version, record.model_sha256 = model.name, model.version, model.sha256
            record.image_format = prediction.image.source_format
            record.operating_point, record.threshold = prediction.operating_point, prediction.threshold
            record.label, record.probability = str(prediction.label), float(prediction.probability)
        audit.write(record)

    return write


class AuditLog:
    """An append-only JSON-lines file. `write` never raises: a failed write is logged (once a minute)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        self._lock = threading.Lock()
        self._last_error_logged = 0.0
        self.failures = 0

    @classmethod
    def open(cls, path: Path | str | None) -> AuditLog | None:
        return cls(Path(path)) if path else None

    def write(self, record: AuditRecord | None = None, /, **fields: Any) -> bool:
        """Append one line: an `AuditRecord`, or its fields as keywords. True when it was written."""
        if record is None:
            record = AuditRecord(**fields)
        elif fields:
            record = dataclasses.replace(record, **fields)
        data = (record.to_json() + "\n").encode("ascii")
        try:
            with self._lock:  # threads of one process; processes are kept apart by O_APPEND
                written = os.write(self._fd, data)
            if written != len(data):
                raise OSError(f"short write ({written} of {len(data)} bytes)")
        except (OSError, ValueError) as exc:
            self.failures += 1
            now = time.monotonic()
            if now - self._last_error_logged > 60:
                self._last_error_logged = now
                log.error("audit log %s: a line was not written (%s: %s)", self.path, type(exc).__name__, exc)
            return False
        return True

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
