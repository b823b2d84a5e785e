"""DICOM results over HTTP (issue 21): POST /predict?format=dicom-sr and POST /explain?format=dicom-sc answer a
DICOM upload with the SR / the overlay's Secondary Capture (application/dicom); any other upload gets 415
dicom_required in the JSON envelope, before it is scored. In process, on the shipped bundle."""

from __future__ import annotations

import copy
import io
import json

import highdicom as hd
import httpx
import numpy as np
import pydicom
import pytest

from app.audit import AuditLog
from app.config import Settings
from app.main import create_app
from app.service import ModelService
from pneumonia.bundle import RESEARCH_DISCLAIMER
from pneumonia.dicom.sc import banner_height
from pneumonia.explain import colour_bar_width
from tests.pacs.conftest import SHIPPED
from tests.pacs.dicoms import chest_cr, evaluation_meanings, head_ct, measurement_group, not_a_chest_cr, to_bytes
from tests.support import REPO_ROOT, run_coroutine

SAMPLE = REPO_ROOT / "tests" / "data" / "samples" / "PNEUMONIA" / "person1246_bacteria_3202.jpeg"


@pytest.fixture(scope="module")
def app(shipped_model, tmp_path_factory):
    settings = Settings(model_dir=SHIPPED, input_check="refuse", audit_log=tmp_path_factory.mktemp("a") / "audit")
    app = create_app(settings)
    app.state.service = ModelService(settings, shipped_model)
    app.state.audit = AuditLog.open(settings.audit_log)  # what the lifespan (not run in process) would open
    yield app
    app.state.audit.close()


def post(app, path: str, data: bytes, media_type: str = "application/dicom", **params) -> httpx.Response:
    async def call() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            return await client.post(path, params=params, content=data, headers={"Content-Type": media_type})

    return run_coroutine(call())


@pytest.fixture(scope="module")
def source() -> pydicom.Dataset:
    return chest_cr(SAMPLE, accession="ACC-HTTP")


def test_predict_answers_a_dicom_upload_with_an_sr_in_its_study(app, source):
    data = to_bytes(source)
    expected = post(app, "/predict", data).json()
    response = post(app, "/predict", data, format="dicom-sr")
    assert response.status_code == 200 and response.headers["content-type"] == "application/dicom"
    assert response.headers["x-disclaimer"] == RESEARCH_DISCLAIMER
    assert float(response.headers["x-probability"]) == pytest.approx(expected["probability"], abs=1e-6)
    report = hd.sr.srread(io.BytesIO(response.content))
    assert isinstance(report, hd.sr.Comprehensive3DSR)
    assert report.StudyInstanceUID == source.StudyInstanceUID and report.SeriesInstanceUID != source.SeriesInstanceUID
    group = measurement_group(report)
    assert group.source_images[0].referenced_sop_instance_uid == source.SOPInstanceUID
    measurements = {m.name.meaning: m.value for m in group.get_measurements()}
    assert measurements["Probability of pneumonia"] == pytest.approx(expected["probability"], abs=1e-6)
    labels = evaluation_meanings(group)
    assert labels["Screening label at the operating point"] == expected["label"]
    # the same image and model give the same SR UID: storing it twice adds nothing
    again = hd.sr.srread(io.BytesIO(post(app, "/predict", data, format="dicom-sr").content))
    assert again.SOPInstanceUID == report.SOPInstanceUID


def test_explain_answers_a_dicom_upload_with_a_secondary_capture(app, source):
    response = post(app, "/explain", to_bytes(source), format="dicom-sc")
    assert response.status_code == 200 and response.headers["content-type"] == "application/dicom"
    capture = pydicom.dcmread(io.BytesIO(response.content))
    assert capture.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage
    assert capture.StudyInstanceUID == source.StudyInstanceUID
    assert "RESEARCH USE ONLY" in capture.SeriesDescription
    width = source.Columns + colour_bar_width(source.Rows)  # the overlay, then its colour bar's strip
    assert capture.pixel_array.shape == (banner_height(width) + source.Rows, width, 3)
    assert capture.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID


@pytest.mark.parametrize("path, fmt", [("/predict", "dicom-sr"), ("/explain", "dicom-sc")])
def test_a_non_dicom_upload_gets_415_dicom_required(app, path, fmt):
    response = post(app, path, SAMPLE.read_bytes(), "image/jpeg", format=fmt)
    assert response.status_code == 415
    body = response.json()
    assert body["error"]["code"] == "dicom_required" and "no study" in body["error"]["message"]
    assert body["disclaimer"] == RESEARCH_DISCLAIMER


def test_a_dicom_without_its_uids_gets_415(app, source):
    bare = copy.deepcopy(source)
    del bare.StudyInstanceUID
    response = post(app, "/predict", to_bytes(bare), format="dicom-sr")
    assert response.status_code == 415 and "StudyInstanceUID" in response.json()["error"]["message"]


def test_a_refused_dicom_gets_the_json_refusal(app):
    response = post(app, "/predict", to_bytes(not_a_chest_cr()), format="dicom-sr")
    assert response.status_code == 422 and response.json()["error"]["code"] == "not_a_chest_xray"
    response = post(app, "/predict", to_bytes(head_ct()), format="dicom-sr")
    assert response.status_code == 422 and "label" not in response.json()


def test_under_warn_a_refused_image_gets_an_sr_with_the_verdict_and_reasons(app):
    response = post(app, "/predict", to_bytes(not_a_chest_cr()), format="dicom-sr", input_check="warn")
    assert response.status_code == 200 and response.headers["x-input-accepted"] == "false"
    report = hd.sr.srread(io.BytesIO(response.content))
    group = measurement_group(report)
    evaluations = evaluation_meanings(group)
    assert evaluations["Input check verdict"] == "Refused"
    reasons = [
        item.TextValue
        for item in report.ContentSequence[-1].ContentSequence
        if item.ConceptNameCodeSequence[0].CodeMeaning == "Input check reason"
    ]
    assert reasons


def test_the_audit_trail_records_dicom_answers(app, source):
    post(app, "/predict", to_bytes(source), format="dicom-sr")
    line = json.loads(app.state.settings.audit_log.read_text().splitlines()[-1])
    assert line["endpoint"] == "POST /predict" and line["status"] == 200
    assert line["probability"] is not None and line["label"] in ("NORMAL", "PNEUMONIA")
    assert np.isfinite(line["threshold"])
