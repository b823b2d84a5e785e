"""`python -m app.pacs` against a real Orthanc over DICOMweb (issue 21).

Orthanc holds three pediatric chest CRs made from the committed samples (two studies; one stores the JPEG itself
as its pixel data), a CR whose pixels are no X-ray, and a head CT. One pass of the worker must give each chest CR an SR that references it and carries
/predict's probability, plus a Secondary Capture with the research-only banner burned in; the refused CR an
SR that says "not analysed" with the reasons and no label; the CT nothing. A second pass adds nothing; a
failing instance does not stop a pass and is scored by the next; an unreachable server is a clear error.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
from typing import Any

import highdicom as hd
import httpx
import numpy as np
import pydicom
import pytest
import requests
from dicomweb_client import DICOMwebClient
from dicomweb_client.session_utils import create_session_from_user_pass
from PIL import Image

from app.config import Settings
from app.main import create_app
from app.pacs import main
from app.service import ModelService
from pneumonia.bundle import RESEARCH_DISCLAIMER
from pneumonia.dicom import RESEARCH_BANNER, SC_SERIES_DESCRIPTION, SR_SERIES_DESCRIPTION
from pneumonia.dicom.sc import banner_height
from pneumonia.dicom.worker import Outcome, Query, Worker
from pneumonia.explain import colour_bar_width
from tests.pacs.conftest import SHIPPED
from tests.pacs.dicoms import (
    chest_cr,
    chest_cr_jpeg,
    evaluation_meanings,
    head_ct,
    measurement_group,
    not_a_chest_cr,
    to_bytes,
)
from tests.pacs.orthanc import USER
from tests.support import REPO_ROOT, free_port, run_coroutine

SAMPLES = REPO_ROOT / "tests" / "data" / "samples"
CHEST = {
    "pneumonia": ("PNEUMONIA/person1174_virus_1980.jpeg", "ACC-PACS-A", "PID-ALPHA"),
    "normal": ("NORMAL/IM-0755-0001.jpeg", "ACC-PACS-A", "PID-ALPHA"),
    "normal2": ("NORMAL/NORMAL2-IM-0526-0001.jpeg", "ACC-PACS-B", "PID-BRAVO"),
}
IDENTIFIERS = ("PID-ALPHA", "PID-BRAVO", "PID-CHARLIE", "PID-DELTA", "ACC-PACS", "Synthetic")
SR_MODALITY, SC_MODALITY = "SR", "OT"
LATER = "20240601"  # the study date of the instances later tests add (outside the filters tested on the first ones)
pytestmark = pytest.mark.timeout(240)


def client_for(orthanc, password: str | None = None) -> DICOMwebClient:
    session = create_session_from_user_pass(USER, password or orthanc.password)
    return DICOMwebClient(orthanc.dicomweb, session=session)


def value(item: dict, keyword: str) -> str:
    tag = f"{pydicom.datadict.tag_for_keyword(keyword):08X}"
    return str((item.get(tag, {}).get("Value") or [""])[0])


@pytest.fixture(scope="module")
def uploaded(orthanc) -> dict[str, pydicom.Dataset]:
    """What the PACS holds before the worker runs, by name."""
    study_a, study_b = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    studies = {"pneumonia": study_a, "normal": study_a, "normal2": study_b}
    datasets = {
        name: (chest_cr_jpeg if name == "normal2" else chest_cr)(
            SAMPLES / path, study_uid=studies[name], accession=accession, patient_id=patient
        )
        for name, (path, accession, patient) in CHEST.items()
    }
    datasets["not_xray"] = not_a_chest_cr(accession="ACC-PACS-C", patient_id="PID-CHARLIE")
    datasets["ct"] = head_ct(accession="ACC-PACS-D", patient_id="PID-DELTA")
    client_for(orthanc).store_instances(list(datasets.values()))
    assert orthanc.count_instances() == 5
    return datasets


@pytest.fixture(scope="module")
def worker_settings(orthanc, tmp_path_factory) -> Settings:
    folder = tmp_path_factory.mktemp("worker")
    (folder / "password").write_text(orthanc.password + "\n")
    return Settings(model_dir=SHIPPED, input_check="refuse", pacs_username=USER,
                    pacs_password_file=folder / "password", audit_log=folder / "audit.jsonl")  # fmt: skip


def worker_env(settings: Settings, **overrides: str) -> dict[str, str]:
    """The environment of `python -m app.pacs` run as an operator runs it, with `settings`' PNEUMONIA_* values
    (none inherited from this process) and every Python warning shown once (PYTHONWARNINGS=default)."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("PNEUMONIA_")}
    env.update(
        PNEUMONIA_MODEL_DIR=str(settings.model_dir), PNEUMONIA_INPUT_CHECK=settings.input_check,
        PNEUMONIA_PACS_USERNAME=str(settings.pacs_username), PNEUMONIA_PACS_PASSWORD_FILE=str(settings.pacs_password_file),
        PNEUMONIA_AUDIT_LOG=str(settings.audit_log), PYTHONWARNINGS="default",
    )  # fmt: skip
    return env | overrides


def run_worker(settings: Settings, *args: str, timeout: float = 220, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "app.pacs", *args], cwd=REPO_ROOT, env=worker_env(settings, **env),
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip


@pytest.fixture(scope="module")
def first_pass(orthanc, uploaded, worker_settings) -> dict:
    """The first pass in a process of its own, logging at DEBUG: everything it writes (stderr: the log, warnings
    and errors; stdout) is kept, to be searched for patient identifiers."""
    result = run_worker(worker_settings, "--url", orthanc.dicomweb, "--once", "--log-level", "DEBUG")
    return {"code": result.returncode, "count": orthanc.count_instances(), "stderr": result.stderr,
            "stdout": result.stdout}  # fmt: skip


def results_in(orthanc, study_uid: str, modality: str) -> list[pydicom.Dataset]:
    client = client_for(orthanc)
    found = client.search_for_instances(study_uid, search_filters={"Modality": modality})
    return [client.retrieve_instance(study_uid, value(i, "SeriesInstanceUID"), value(i, "SOPInstanceUID"))
            for i in found]  # fmt: skip


def report_about(orthanc, source: pydicom.Dataset) -> hd.sr.Comprehensive3DSR:
    """The SR in the source's study whose measurement group names the source as its image (exactly one)."""
    matches = []
    for dataset in results_in(orthanc, source.StudyInstanceUID, SR_MODALITY):
        report = hd.sr.Comprehensive3DSR.from_dataset(dataset)
        group = measurement_group(report)
        if group.source_images[0].referenced_sop_instance_uid == source.SOPInstanceUID:
            matches.append(report)
    assert len(matches) == 1, f"{len(matches)} SRs reference {source.SOPInstanceUID}"
    return matches[0]


def texts(report: hd.sr.Comprehensive3DSR) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}

    def walk(items) -> None:
        for item in items:
            if item.ValueType == "TEXT":
                found.setdefault(item.ConceptNameCodeSequence[0].CodeMeaning, []).append(item.TextValue)
            walk(getattr(item, "ContentSequence", []))

    walk(report.ContentSequence)
    return found


def predict_json(model, data: bytes) -> dict:
    """/predict's answer for the same file, from the service in-process (the same bundle and policy)."""
    settings = Settings(model_dir=SHIPPED, input_check="refuse")
    app = create_app(settings)
    app.state.service = ModelService(settings, model)

    async def call() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            return await client.post("/predict", files={"file": ("x.dcm", data, "application/dicom")})

    response = run_coroutine(call())
    assert response.status_code == 200, response.text
    return response.json()


# --- the first pass ------------------------------------------------------------------------------------------
def test_a_pass_exits_zero_and_stores_an_sr_and_sc_per_chest_radiograph_and_an_sr_for_the_refused_one(
    first_pass, orthanc
):
    assert first_pass["code"] == 0, first_pass["stderr"][-4000:]
    assert first_pass["count"] == 5 + 3 * 2 + 1


def test_the_sr_references_the_scored_instance_and_carries_predicts_probability(
    first_pass, orthanc, uploaded, shipped_model
):
    for name in CHEST:
        source = uploaded[name]
        report = report_about(orthanc, source)
        expected = predict_json(shipped_model, to_bytes(source))
        group = measurement_group(report)
        assert group.source_images[0].referenced_sop_class_uid == source.SOPClassUID
        measurements = {m.name.meaning: m.value for m in group.get_measurements()}
        assert measurements["Probability of pneumonia"] == pytest.approx(expected["probability"], abs=1e-3)
        assert measurements["Decision threshold"] == pytest.approx(expected["threshold"], abs=1e-9)
        evaluations = evaluation_meanings(group)
        assert evaluations["Screening label at the operating point"] == expected["label"]
        assert evaluations["Input check verdict"] == "Accepted"
        # placed in the source's study, as a research result, with only what placing it needs
        assert report.StudyInstanceUID == source.StudyInstanceUID and report.PatientID == source.PatientID
        assert report.AccessionNumber == source.AccessionNumber
        assert report.PatientBirthDate == "" and report.PatientSex == "" and report.ReferringPhysicianName == ""
        assert report.SeriesInstanceUID != source.SeriesInstanceUID
        assert report.SeriesDescription == SR_SERIES_DESCRIPTION and report.ContentQualification == "RESEARCH"
        assert report.CurrentRequestedProcedureEvidenceSequence[0].StudyInstanceUID == source.StudyInstanceUID
        # algorithm identification: name, version and the bundle's digest
        model = expected["model"]
        algorithm = texts(report)
        assert [model["name"]] == algorithm["Algorithm Name"] and [model["version"]] == algorithm["Algorithm Version"]
        assert any(model["sha256"] in p for p in algorithm["Algorithm Parameters"])
        assert any(expected["operating_point"] in p for p in algorithm["Algorithm Parameters"])
        assert algorithm["Analysis status"] == ["analysed"]
        assert algorithm["Disclaimer"] == [RESEARCH_DISCLAIMER]


def test_the_secondary_capture_has_pixels_and_the_banner_burned_in(first_pass, orthanc, uploaded, shipped_model):
    for name in CHEST:
        source = uploaded[name]
        captures = results_in(orthanc, source.StudyInstanceUID, SC_MODALITY)
        mine = [c for c in captures if c.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID]
        assert len(mine) == 1
        capture = mine[0]
        assert capture.SeriesDescription == SC_SERIES_DESCRIPTION and "RESEARCH USE ONLY" in capture.SeriesDescription
        assert capture.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage
        assert capture.StudyInstanceUID == source.StudyInstanceUID and capture.ContentQualification == "RESEARCH"
        pixels = capture.pixel_array
        width = source.Columns + colour_bar_width(source.Rows)  # the image, then the colour bar's strip beside it
        band = banner_height(width)
        assert pixels.shape == (band + source.Rows, width, 3) and pixels.dtype == np.uint8
        # below the banner: the overlay /explain gives for the same file, untouched
        explanation = shipped_model.explain_prediction(shipped_model.predict(to_bytes(source)))
        overlay = np.asarray(Image.open(io.BytesIO(explanation.overlay_png)).convert("RGB"))
        assert np.abs(pixels[band:].astype(int) - overlay.astype(int)).mean() < 1.0
        # the banner: black with yellow text in it (the overlay without the banner has no such band)
        banner = pixels[:band]
        yellow = (banner[..., 0] > 180) & (banner[..., 1] > 180) & (banner[..., 2] < 100)
        assert yellow.sum() > 0.02 * banner[..., 0].size, "no burned-in text in the banner"
        assert (banner.max(axis=2) < 40).mean() > 0.5, "the banner is not mostly black"
    assert RESEARCH_BANNER == "RESEARCH USE ONLY — NOT FOR DIAGNOSIS"


def test_a_refused_image_gets_a_not_analysed_sr_with_the_reasons_and_no_label(first_pass, orthanc, uploaded):
    source = uploaded["not_xray"]
    report = report_about(orthanc, source)
    group = measurement_group(report)
    assert group.get_measurements() == []
    evaluations = evaluation_meanings(group)
    assert evaluations == {"Input check verdict": "Refused"}
    found = texts(report)
    assert found["Analysis status"][0].startswith("not analysed")
    assert found["Input check reason"] and found["Input check refusal code"]
    assert results_in(orthanc, source.StudyInstanceUID, SC_MODALITY) == []


def test_the_ct_gets_nothing(first_pass, orthanc, uploaded):
    source = uploaded["ct"]
    found = client_for(orthanc).search_for_instances(source.StudyInstanceUID)
    assert [value(i, "SOPInstanceUID") for i in found] == [source.SOPInstanceUID]


def test_the_audit_trail_has_a_line_per_instance_and_no_patient_identifier(first_pass, worker_settings):
    text = worker_settings.audit_log.read_text()
    lines = [json.loads(line) for line in text.splitlines()]
    assert len(lines) == 4 and {line["source"] for line in lines} == {"pacs"}
    assert sorted(line["status"] for line in lines) == [200, 200, 200, 422]
    assert all(line["image_sha256"] and line["image_format"] == "DICOM" for line in lines)
    assert all(line["image_bytes"] > 0 and line["duration_ms"] > 0 for line in lines)
    # one request id for the pass (the worker has no HTTP request), the one its log names as the pass starts
    (pass_id,) = {line["request_id"] for line in lines}
    assert re.fullmatch(r"pacs-[0-9a-f]{32}", pass_id) and f"pass {pass_id}" in first_pass["stderr"]
    assert not any(identifier in text for identifier in IDENTIFIERS)


def test_nothing_the_worker_writes_holds_a_patient_identifier(first_pass, uploaded):
    """Its whole stderr (the log at DEBUG, every warning, errors) and stdout: instances by SOP Instance UID only."""
    output = first_pass["stderr"] + "\n" + first_pass["stdout"]
    for name in (*CHEST, "not_xray"):
        assert uploaded[name].SOPInstanceUID in output
    assert uploaded["ct"].SOPInstanceUID not in output
    assert not any(identifier in output for identifier in IDENTIFIERS)
    assert not any(uploaded[name].StudyInstanceUID in output for name in uploaded)
    assert "Traceback" not in output


# --- later passes --------------------------------------------------------------------------------------------
def test_a_second_pass_adds_nothing_and_loads_no_model(first_pass, orthanc, worker_settings):
    def must_not_load():
        raise AssertionError("the second pass had something to score")

    before = orthanc.count_instances()
    assert main(["--url", orthanc.dicomweb, "--once"], settings=worker_settings, load=must_not_load) == 0
    assert orthanc.count_instances() == before == first_pass["count"]


def test_the_query_filters_by_accession_and_study_date(first_pass, orthanc, shipped_model):
    worker = Worker(client_for(orthanc), shipped_model.metadata, lambda: shipped_model)
    assert len(list(worker.find(Query(accession="ACC-PACS-B")))) == 0  # done already
    for query, found in ((Query(accession="ACC-PACS-A"), 2), (Query(study_date="20240301-20240331"), 4),
                         (Query(study_date="-20240101"), 0), (Query(modalities=("DX",)), 0)):  # fmt: skip
        summary = worker.run_once(query)
        assert (summary.found, summary.skipped, summary.stored) == (found, found, 0), query


class FlakyClient(DICOMwebClient):
    """Orthanc, except that retrieving one chosen instance fails with HTTP 500."""

    failing: str = ""

    def retrieve_instance(
        self,
        study_instance_uid: str,
        series_instance_uid: str,
        sop_instance_uid: str,
        media_types: tuple[str | tuple[str, str], ...] | None = None,
        additional_params: dict[str, Any] | None = None,
    ) -> pydicom.Dataset:
        if sop_instance_uid == self.failing:
            response = requests.Response()
            response.status_code, response.reason = 500, "Internal Server Error"
            raise requests.HTTPError("500 Server Error", response=response)
        return super().retrieve_instance(
            study_instance_uid, series_instance_uid, sop_instance_uid, media_types, additional_params
        )


def test_a_failing_instance_is_reported_the_pass_goes_on_and_the_next_pass_scores_it(
    first_pass, orthanc, shipped_model
):
    study = pydicom.uid.generate_uid()
    first, second = (chest_cr(SAMPLES / path, study_uid=study, accession="ACC-PACS-E", patient_id="PID-ECHO")
                     for path in ("PNEUMONIA/person848_bacteria_2769.jpeg", "NORMAL/IM-0511-0001-0002.jpeg"))  # fmt: skip
    first.preamble = second.preamble = b"\x00" * 128  # stored as Part 10 files (the first pass's were not)
    client = client_for(orthanc)
    client.store_instances([first, second])
    flaky = FlakyClient(orthanc.dicomweb, session=create_session_from_user_pass(USER, orthanc.password))
    flaky.failing = first.SOPInstanceUID
    outcomes: list[Outcome] = []
    worker = Worker(flaky, shipped_model.metadata, lambda: shipped_model, on_outcome=outcomes.append)
    summary = worker.run_once(Query(accession="ACC-PACS-E"))
    assert (summary.found, summary.stored, summary.failed, summary.failures) == (2, 1, 1, [first.SOPInstanceUID])
    failed = next(o for o in outcomes if o.status == "failed")
    assert failed.error == "retrieve: HTTP 500 Internal Server Error"
    again = Worker(client, shipped_model.metadata, lambda: shipped_model).run_once(Query(accession="ACC-PACS-E"))
    assert (again.found, again.skipped, again.stored, again.failed) == (2, 1, 1, 0)


# --- errors ----------------------------------------------------------------------------------------------------
def test_an_unreachable_server_is_a_clear_error_and_a_nonzero_exit(tmp_path):
    url = f"http://127.0.0.1:{free_port()}/dicom-web"
    result = subprocess.run([sys.executable, "-m", "app.pacs", "--url", url, "--once"], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=120,
                            env={"PATH": "/usr/bin:/bin", "PNEUMONIA_MODEL_DIR": str(SHIPPED)})  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert f"error: cannot reach the DICOMweb server at {url}" in result.stderr


def test_refused_credentials_are_a_clear_error(orthanc, tmp_path, capsys):
    (tmp_path / "password").write_text("not-the-password")
    settings = Settings(model_dir=SHIPPED, pacs_username=USER, pacs_password_file=tmp_path / "password")
    assert main(["--url", orthanc.dicomweb, "--once"], settings=settings) == 1
    assert "refused the credentials (HTTP 401)" in capsys.readouterr().err


def test_credentials_never_come_from_the_command_line():
    with pytest.raises(SystemExit):
        main(["--url", "http://127.0.0.1:1/dicom-web", "--password", "x"])


# --- resuming, and errors that are not the server's --------------------------------------------------------------
def test_an_interrupted_pass_resumes_with_only_the_instances_it_had_not_done(first_pass, orthanc, shipped_model):
    """Stopped after its first batch (SIGTERM sets should_stop), a pass leaves the rest; the next pass skips what
    is done (its SR is in the PACS: no local state) and scores exactly the others."""
    study = pydicom.uid.generate_uid()
    sources = [chest_cr(SAMPLES / path, study_uid=study, accession="ACC-PACS-F", patient_id="PID-FOXTROT",
                        study_date=LATER) for path, _, _ in CHEST.values()]  # fmt: skip
    client = client_for(orthanc)
    client.store_instances(sources)
    before, query = orthanc.count_instances(), Query(accession="ACC-PACS-F")
    first: list = []
    interrupted = Worker(client, shipped_model.metadata, lambda: shipped_model, batch_size=1,
                         on_outcome=first.append, should_stop=lambda: len(first) >= 1)  # fmt: skip
    summary = interrupted.run_once(query)
    assert (summary.found, summary.skipped, summary.stored, summary.not_analysed, summary.failed) == (3, 0, 1, 0, 0)
    assert len(first) == 1 and orthanc.count_instances() == before + 2  # one SR and its SC
    second: list = []
    resumed = Worker(client, shipped_model.metadata, lambda: shipped_model, batch_size=1, on_outcome=second.append)
    summary = resumed.run_once(query)
    assert (summary.found, summary.skipped, summary.stored, summary.not_analysed, summary.failed) == (3, 1, 2, 0, 0)
    remaining = {source.SOPInstanceUID for source in sources} - {first[0].sop_instance_uid}
    assert sorted(outcome.sop_instance_uid for outcome in second) == sorted(remaining)
    assert orthanc.count_instances() == before + 3 * 2
    for source in sources:
        report_about(orthanc, source)  # exactly one SR each


def test_an_unexpected_error_is_one_error_line_and_exit_2_not_a_traceback(orthanc, worker_settings, tmp_path):
    """A bundle whose metadata reads but whose model cannot load (no model.onnx). The model is loaded when the
    first image needs scoring, so this fails in the middle of a pass: not "unreachable" (exit 1) but exit 2, with
    one `error: ...` line."""
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    shutil.copy(SHIPPED / "metadata.json", bundle)
    source = chest_cr(SAMPLES / CHEST["normal"][0], accession="ACC-PACS-G", patient_id="PID-GOLF", study_date=LATER)
    client_for(orthanc).store_instances([source])
    try:
        result = run_worker(worker_settings, "--url", orthanc.dicomweb, "--once", "--study", source.StudyInstanceUID,
                            timeout=120, PNEUMONIA_MODEL_DIR=str(bundle))  # fmt: skip
    finally:
        with orthanc.rest() as rest:  # leave the PACS as the other tests expect it
            (found,) = rest.post("/tools/lookup", content=source.StudyInstanceUID).json()
            rest.delete(f"/studies/{found['ID']}").raise_for_status()
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "model.onnx" in errors[0], result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "PID-GOLF" not in result.stderr
