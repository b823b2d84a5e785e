"""DICOM results over HTTP: `POST /predict?format=dicom-sr` (the SR) and `POST /explain?format=dicom-sc` (the
overlay as a Secondary Capture), both `application/dicom`, for a DICOM upload; built by pneumonia.dicom.

The upload is checked before it is scored: a file that is not DICOM, or lacks the UIDs a result must refer to,
gets 415 `dicom_required` in the JSON envelope (there is no study to attach a result to). A refused image is
answered as in JSON, with 422 and the verdict. The response carries the same X-* headers as /explain's PNG,
so the audit trail records the answer (app/api/audit.py).
"""

from __future__ import annotations

import io
import json
from typing import Any

from anyio import to_thread
from fastapi import Response
from pydicom import Dataset

from app.service import Analysis
from pneumonia.bundle import RESEARCH_DISCLAIMER
from pneumonia.dicom.common import read_source

MEDIA_TYPE = "application/dicom"
SR_FORMAT, SC_FORMAT = "dicom-sr", "dicom-sc"


def dicom_response_doc(what: str, responses: dict[int | str, dict[str, Any]] | None = None) -> dict[int | str, Any]:
    """`responses` (OpenAPI) with application/dicom added to its 200 answer."""
    responses = dict(responses or {})
    ok = dict(responses.get(200, {}))
    note = (
        f"With ?format={what}: the {_NAMES[what]} as application/dicom (a DICOM upload only, else 415 "
        "dicom_required), in the upload's study, in its own series; headers X-Probability, X-Label, X-Threshold, "
        "X-Disclaimer, X-Input-Check. Research use only."
    )
    ok["description"] = f"{ok['description']} {note}" if ok.get("description") else note
    ok["content"] = {**ok.get("content", {}), MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}}
    responses[200] = ok
    return responses


_NAMES = {SR_FORMAT: "DICOM Structured Report (TID 1500)", SC_FORMAT: "Secondary Capture of the overlay"}


def dicom_source(data: bytes) -> Dataset:
    """The upload's DICOM header, or 415 dicom_required (raised before any scoring)."""
    return read_source(data)


async def dicom_response(source: Dataset, analysis: Analysis, fmt: str) -> Response:
    """The SR (dicom-sr) or the Secondary Capture (dicom-sc) of `analysis`, as application/dicom."""
    body = await to_thread.run_sync(_encode, source, analysis, fmt)
    prediction = analysis.prediction
    headers = {
        "X-Disclaimer": RESEARCH_DISCLAIMER,
        "X-Probability": f"{prediction.probability:.6f}",
        "X-Label": prediction.label,
        "X-Threshold": f"{prediction.threshold:g}",
        "X-Prediction-Id": analysis.prediction_id,
        "X-Input-Check": json.dumps({"accepted": prediction.accepted, "policy": prediction.input_check.policy}),
        "X-Input-Accepted": "true" if prediction.accepted else "false",
    }
    if analysis.explanation is not None:
        headers["X-Method"] = analysis.explanation.method
    return Response(content=body, media_type=MEDIA_TYPE, headers=headers)


def _encode(source: Dataset, analysis: Analysis, fmt: str) -> bytes:
    from pneumonia.dicom.sc import secondary_capture
    from pneumonia.dicom.sr import Result, structured_report

    if fmt == SC_FORMAT:
        if analysis.explanation is None:  # the route always explains for dicom-sc
            raise RuntimeError("a Secondary Capture was asked for without an explanation")
        dataset: Dataset = secondary_capture(source, analysis.explanation)
    else:
        dataset = structured_report(source, Result.of(analysis.prediction))
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
