"""What the SR and Secondary Capture writers share: the source instance, the result UIDs and the codes.

Patient and study attributes are copied only as far as placing a result in its source study needs: the
patient's name and ID (the PACS files an instance under them), the study's UID, date, time, ID and
accession number. Birth date, sex and the referring physician are written empty (type 2: present, no
value); nothing else of the source's header travels.
"""

from __future__ import annotations

import io
import uuid
from dataclasses import dataclass

import highdicom as hd
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from pneumonia.errors import ErrorCode, PneumoniaError
from pneumonia.imaging import DICOM_MAGIC, DICOM_MAGIC_OFFSET
from pneumonia.input_check import Policy
from pneumonia.model import ModelIdentity

MANUFACTURER = "pneumonia-screening (open-source research software)"
RESEARCH_BANNER = "RESEARCH USE ONLY — NOT FOR DIAGNOSIS"
# Series descriptions are LO (64 characters); kept ASCII so any PACS shows them as written.
SR_SERIES_DESCRIPTION = "AI pneumonia screening SR - RESEARCH USE ONLY, NOT FOR DIAGNOSIS"
SC_SERIES_DESCRIPTION = "RESEARCH USE ONLY - NOT FOR DIAGNOSIS - pneumonia heatmap"
SR_SERIES_NUMBER = 9901
SC_SERIES_NUMBER = 9902
UTF8 = "ISO_IR 192"

# Concepts without a standard code get one from this private scheme (a "99" designator, PS3.16 section 8.2),
# declared in each instance's Coding Scheme Identification Sequence.
# The namespace of this project's derived UIDs (a fixed random UUID; see derived_uid)
UID_NAMESPACE = uuid.UUID("6f1f2c0e-5b7a-4c55-9a43-2f5d8e0b7c21")
PRIVATE_SCHEME = "99PNEUSCR"
PRIVATE_SCHEME_NAME = "pneumonia-screening research codes"


# IHE AI Results names the algorithm in Contributing Equipment with the purpose "Processing Algorithm" (a code
# of its own, Newcode1 in 99IHE); highdicom accepts only CID 7005's codes there, of which this is the one meant.
PROCESSING_ALGORITHM = codes.DCM.ProcessingEquipment


def private_code(value: str, meaning: str) -> Code:
    return Code(value, PRIVATE_SCHEME, meaning)


class DicomResultError(PneumoniaError):
    """A DICOM result was asked for an input that cannot carry one (not DICOM, or no study/instance UIDs)."""

    code = ErrorCode.DICOM_REQUIRED


# What a source instance must hold for a result to reference it and to be placed in its study.
REQUIRED_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")


def is_dicom(data: bytes) -> bool:
    return data[DICOM_MAGIC_OFFSET : DICOM_MAGIC_OFFSET + len(DICOM_MAGIC)] == DICOM_MAGIC


def read_source(data: bytes) -> Dataset:
    """The header of an uploaded DICOM (no pixel data), or DicomResultError when a result cannot refer to it."""
    if not is_dicom(data):
        raise DicomResultError(
            "A DICOM result needs a DICOM upload: this file is not DICOM, so there is no study to attach the "
            "result to. Upload the DICOM instance, or ask for the JSON answer."
        )
    try:
        dataset = dcmread(io.BytesIO(data), stop_before_pixels=True)
    except (InvalidDicomError, ValueError, EOFError, OSError, KeyError, TypeError) as exc:
        raise DicomResultError(f"The DICOM header cannot be read ({type(exc).__name__}).") from exc
    check_source(dataset)
    return dataset


def check_source(dataset: Dataset) -> None:
    missing = [name for name in REQUIRED_UIDS if not str(dataset.get(name, "") or "").strip()]
    if missing:
        raise DicomResultError(
            f"The DICOM has no {', '.join(missing)}: a result cannot be placed in its study or refer to it."
        )


def study_reference(source: Dataset) -> Dataset:
    """A copy of only what places a result in the source's study and refers to the source instance."""
    reference = Dataset()
    reference.SpecificCharacterSet = UTF8  # values are re-encoded: pydicom decoded them with the source's set
    for keyword in ("PatientName", "PatientID", "StudyDate", "StudyTime", "AccessionNumber", "StudyID"):
        setattr(reference, keyword, source.get(keyword, "") or "")
    reference.PatientBirthDate = ""
    reference.PatientSex = ""
    reference.ReferringPhysicianName = ""
    for keyword in REQUIRED_UIDS:
        setattr(reference, keyword, str(source.get(keyword)))
    reference.Modality = str(source.get("Modality", "") or "")
    return reference


@dataclass(frozen=True)
class ResultUIDs:
    """The UIDs of one source instance's results, derived (not random) from what identifies a result.

    The series are one per study, bundle and kind: every SR this bundle writes in a study is in one series,
    every Secondary Capture in another. An instance's UID also depends on the source instance, the operating
    point, its threshold and the input-check policy, so the same result always has the same UID: storing it
    twice adds nothing, and the PACS worker finds an already-scored instance by asking for its SR's UID.
    """

    sr_series: str
    sc_series: str
    sr_instance: str
    sc_instance: str


def result_uids(
    study_uid: str, source_sop_instance_uid: str, model: ModelIdentity, operating_point: str, threshold: float,
    policy: Policy,
) -> ResultUIDs:  # fmt: skip
    decision = (source_sop_instance_uid, operating_point, f"{threshold:.12g}", policy)
    sr_series, sc_series = series_uids(study_uid, model)
    return ResultUIDs(sr_series, sc_series, _uid(model, "sr", *decision), _uid(model, "sc", *decision))


def series_uids(study_uid: str, model: ModelIdentity) -> tuple[str, str]:
    """(SR series, Secondary Capture series) of this bundle's results in a study."""
    return _uid(model, "sr-series", study_uid), _uid(model, "sc-series", study_uid)


def _uid(model: ModelIdentity, *parts: str) -> str:
    return derived_uid("pneumonia-screening", model.sha256, *parts)


def derived_uid(*parts: str) -> str:
    """A UID under 2.25 (PS3.5 B.2) from a name-based UUID (version 5) of `parts`: the same parts, the same UID.
    (pydicom's generate_uid ignores its entropy sources under 2.25 and draws a random UUID.)"""
    return f"2.25.{uuid.uuid5(UID_NAMESPACE, chr(31).join(parts)).int}"


def algorithm_equipment(model: ModelIdentity) -> hd.ContributingEquipment:
    """The model as Contributing Equipment, as IHE AI Results asks of every result: manufacturer, model name,
    software version and a Device UID that changes with the model (purpose: Processing Equipment)."""
    item = hd.ContributingEquipment(
        MANUFACTURER,
        PROCESSING_ALGORITHM,
        manufacturer_model_name=model.name[:64],
        software_versions=model.version[:64],
        device_serial_number=model.sha256[:16],
        contribution_description=f"bundle digest (SHA-256 of model.onnx) {model.sha256}",
    )
    item.DeviceUID = device_uid(model)
    return item


def coding_schemes() -> list[CodingSchemeIdentificationItem]:
    """The non-standard coding schemes a result uses, declared in it."""
    return [CodingSchemeIdentificationItem(PRIVATE_SCHEME, name=PRIVATE_SCHEME_NAME)]


def device_uid(model: ModelIdentity) -> str:
    """The algorithm as an SR observer device: one UID per bundle (its model.onnx digest)."""
    return derived_uid("pneumonia-screening device", model.sha256)


def instance_number(source: Dataset) -> int:
    try:
        return max(1, int(source.get("InstanceNumber", 1) or 1))
    except (TypeError, ValueError):
        return 1
