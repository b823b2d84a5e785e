"""DICOM instances for the PACS tests, built with pydicom: chest CRs from the committed samples, a CT, and a CR
that is not a chest X-ray. Synthetic patients only."""

from __future__ import annotations

import io
from pathlib import Path

import highdicom as hd
import numpy as np
from PIL import Image
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    UID,
    ComputedRadiographyImageStorage,
    CTImageStorage,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    generate_uid,
)


def _base(sop_class: str, modality: str, pixels: np.ndarray, *, study_uid: str, patient_id: str,
          accession: str, study_date: str) -> Dataset:  # fmt: skip
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, generate_uid()
    ds.PatientName, ds.PatientID = f"Synthetic^{patient_id}", patient_id
    ds.PatientBirthDate, ds.PatientSex = "20210101", "F"
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.StudyID = study_date, "101500", accession, "1"
    ds.ReferringPhysicianName = "Referrer^Synthetic"
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = modality, 1, 1
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    if pixels.dtype == np.uint8:
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    else:
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels.tobytes()
    return ds


def chest_cr(jpeg: Path, *, study_uid: str | None = None, patient_id: str = "P1", accession: str = "A1",
             study_date: str = "20240315", age: str = "003Y") -> Dataset:  # fmt: skip
    """A committed sample X-ray as a pediatric frontal chest CR."""
    pixels = np.asarray(Image.open(jpeg).convert("L"), dtype=np.uint8)
    ds = _base(ComputedRadiographyImageStorage, "CR", pixels, study_uid=study_uid or generate_uid(),
               patient_id=patient_id, accession=accession, study_date=study_date)  # fmt: skip
    ds.BodyPartExamined, ds.ViewPosition, ds.PatientAge = "CHEST", "PA", age
    ds.PatientOrientation = ["L", "F"]
    return ds


def chest_cr_jpeg(jpeg: Path, **kwargs) -> Dataset:
    """A committed sample X-ray as a chest CR whose pixel data is the JPEG file itself (JPEG Baseline, as a
    modality or a wrapping tool often stores it)."""
    ds = chest_cr(jpeg, **kwargs)
    with Image.open(jpeg) as image:
        colour = image.mode != "L"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PixelData = encapsulate([jpeg.read_bytes()])
    ds["PixelData"].VR = "OB"
    if colour:  # the committed samples are 3-channel JPEGs
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "YBR_FULL_422", 0
    return ds


def not_a_chest_cr(*, study_uid: str | None = None, patient_id: str = "P9", accession: str = "A9",
                   study_date: str = "20240315") -> Dataset:  # fmt: skip
    """A CR whose pixels are no X-ray at all (a checkerboard with noise): the input check refuses it."""
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:256, 0:256]
    board = (((yy // 32) + (xx // 32)) % 2 * 200 + rng.integers(0, 40, (256, 256))).astype(np.uint8)
    ds = _base(ComputedRadiographyImageStorage, "CR", board, study_uid=study_uid or generate_uid(),
               patient_id=patient_id, accession=accession, study_date=study_date)  # fmt: skip
    ds.BodyPartExamined, ds.ViewPosition, ds.PatientAge = "CHEST", "PA", "004Y"
    return ds


def head_ct(*, study_uid: str | None = None, patient_id: str = "P8", accession: str = "A8",
            study_date: str = "20240316") -> Dataset:  # fmt: skip
    """One axial CT slice of a synthetic head phantom (not a chest radiograph)."""
    yy, xx = np.mgrid[0:128, 0:128]
    disc = ((yy - 64) ** 2 + (xx - 64) ** 2 < 50**2).astype(np.uint16) * 1040 + 24
    ds = _base(CTImageStorage, "CT", disc, study_uid=study_uid or generate_uid(), patient_id=patient_id,
               accession=accession, study_date=study_date)  # fmt: skip
    ds.BodyPartExamined = "HEAD"
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.ImagePositionPatient, ds.ImageOrientationPatient = [0, 0, 0], [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing, ds.SliceThickness = [0.5, 0.5], 1.0
    ds.FrameOfReferenceUID = generate_uid()
    return ds


def to_bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def measurement_group(
    report: hd.sr.Comprehensive3DSR | hd.sr.ComprehensiveSR | hd.sr.EnhancedSR,
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """The report's first image measurement group (every SR the service writes has exactly one). highdicom's
    `content` is typed as a plain ContentSequence; at run time it is the MeasurementReport that has the method."""
    content: hd.sr.MeasurementReport = report.content  # type: ignore[assignment]
    return content.get_image_measurement_groups()[0]


def evaluation_meanings(group: hd.sr.MeasurementsAndQualitativeEvaluations) -> dict[str, str]:
    """The group's qualitative evaluations, concept name -> coded value's meaning. (highdicom types a
    QualitativeEvaluation's `value` as a number; it is the CodedConcept the evaluation holds.)"""
    return {e.name.meaning: e.value.meaning for e in group.get_qualitative_evaluations()}  # type: ignore[union-attr]
