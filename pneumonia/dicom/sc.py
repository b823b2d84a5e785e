"""The explanation overlay as a DICOM Secondary Capture (highdicom `SCImage`), for any DICOM viewer.

The image is the overlay PNG that `/explain` returns (the map over the image as scored, with its colour bar)
under a black banner whose pixels say "RESEARCH USE ONLY — NOT FOR DIAGNOSIS" and, on a second line, what
the map is (method, explained class, probability, model). The banner is added above the overlay, so no
pixel of the overlay is covered; the series description says the same. The instance goes into the source's
study, in its own series, with UIDs derived like the SR's (pneumonia.dicom.common.result_uids).
"""

from __future__ import annotations

import io
from functools import lru_cache

import highdicom as hd
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom import Dataset

from pneumonia.dicom.common import (
    MANUFACTURER,
    RESEARCH_BANNER,
    SC_SERIES_DESCRIPTION,
    SC_SERIES_NUMBER,
    algorithm_equipment,
    check_source,
    coding_schemes,
    instance_number,
    result_uids,
    study_reference,
)
from pneumonia.input_check import Policy
from pneumonia.model import Explanation

BANNER_BACKGROUND = (0, 0, 0)
BANNER_TEXT = (255, 255, 0)
DETAIL_TEXT = (255, 255, 255)
MIN_FONT_PX = 8
TWO_LINES_BELOW_PX = 12  # a one-line banner smaller than this goes on two lines
FONT_FILES = ("DejaVuSans-Bold.ttf", "DejaVuSans.ttf")  # found in the system's font folders when installed
# Orientation of a frontal chest radiograph as displayed (row towards the patient's left, column towards the
# feet); used when the source states none, or when the image was turned back before it was scored.
DEFAULT_PATIENT_ORIENTATION = ("L", "F")


def secondary_capture(source: Dataset, explanation: Explanation, policy: Policy | None = None) -> hd.sc.SCImage:
    """The Secondary Capture of `explanation`'s overlay, placed in `source`'s study."""
    check_source(source)
    reference = study_reference(source)
    prediction = explanation.prediction
    uids = result_uids(
        reference.StudyInstanceUID, reference.SOPInstanceUID, prediction.model, prediction.operating_point,
        prediction.threshold, policy or prediction.input_check.policy,
    )  # fmt: skip
    overlay = np.asarray(Image.open(io.BytesIO(explanation.overlay_png)).convert("RGB"))
    detail = (
        f"{explanation.method} map for {explanation.explained_class} | P(pneumonia) {prediction.probability:.3f} "
        f"at {prediction.operating_point} | {prediction.model.name} {prediction.model.version}"
    )
    pixels = with_banner(overlay, detail)
    turned = bool(prediction.input_check.rotated_back_degrees or prediction.input_check.mirrored)
    image = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=reference,
        pixel_array=pixels,
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=uids.sc_series,
        series_number=SC_SERIES_NUMBER,
        sop_instance_uid=uids.sc_instance,
        instance_number=instance_number(source),
        manufacturer=MANUFACTURER,
        patient_orientation=DEFAULT_PATIENT_ORIENTATION if turned else _orientation(source),
        series_description=SC_SERIES_DESCRIPTION,
        manufacturer_model_name=prediction.model.name[:64],
        software_versions=prediction.model.version[:64],
        content_qualification=hd.ContentQualificationValues.RESEARCH,
        transfer_syntax_uid=hd.sc.sop.ExplicitVRLittleEndian,
        contributing_equipment=[algorithm_equipment(prediction.model)],
        coding_schemes=coding_schemes(),
    )
    # General Image module: what the picture was derived from (the scored instance) and how
    derived_from = Dataset()
    derived_from.ReferencedSOPClassUID = reference.SOPClassUID
    derived_from.ReferencedSOPInstanceUID = reference.SOPInstanceUID
    image.SourceImageSequence = [derived_from]
    image.DerivationDescription = (
        f"{explanation.method} saliency map of {prediction.model.name} {prediction.model.version} over the image as "
        "scored, with a colour bar and a research-only banner; not a localisation of disease"
    )[:1024]
    image.BurnedInAnnotation = "NO"  # the banner identifies no patient (the attribute's meaning)
    return image


def banner_height(width: int) -> int:
    """Rows of the banner added above an overlay `width` pixels wide."""
    return _layout(width)[3]


def with_banner(rgb: np.ndarray, detail: str = "") -> np.ndarray:
    """`rgb` (H, W, 3) uint8 under a black banner with the research-only text burned in (and `detail` below
    it, smaller, when given): returns (banner_height(W) + H, W, 3) uint8."""
    rgb = np.asarray(rgb, dtype=np.uint8)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected (H, W, 3) uint8 RGB, got {rgb.shape}")
    width = rgb.shape[1]
    lines, main_size, detail_size, height = _layout(width)
    banner = Image.new("RGB", (width, height), BANNER_BACKGROUND)
    draw = ImageDraw.Draw(banner)
    margin = max(2, main_size // 4)
    for index, line in enumerate(lines):
        y = margin + index * int(main_size * 1.2)
        draw.text((width // 2, y), line, fill=BANNER_TEXT, font=_font(main_size), anchor="mt")
    if detail:
        font = _font(detail_size)
        while len(detail) > 8 and draw.textlength(detail, font=font) > width - 2 * margin:
            detail = detail[: max(8, int(len(detail) * 0.9)) - 1] + "…"
        draw.text((width // 2, height - margin), detail, fill=DETAIL_TEXT, font=font, anchor="mb")
    return np.concatenate([np.asarray(banner), rgb], axis=0)


@lru_cache(maxsize=64)
def _layout(width: int) -> tuple[tuple[str, ...], int, int, int]:
    """(banner lines, their font px, detail font px, banner rows): the banner on one line as large as fits 92% of
    the width, or on two lines ("RESEARCH USE ONLY —" / "NOT FOR DIAGNOSIS") when one line would be too small."""
    lines: tuple[str, ...] = (RESEARCH_BANNER,)
    size = _fitting_size(lines, width)
    if size < TWO_LINES_BELOW_PX:
        head, tail = RESEARCH_BANNER.split(" — ")
        lines = (f"{head} —", tail)
        size = _fitting_size(lines, width)
    detail = max(MIN_FONT_PX, int(size * 0.6))
    margin = max(2, size // 4)
    return lines, size, detail, margin + int(size * 1.2) * len(lines) + margin + int(detail * 1.3) + margin


def _fitting_size(lines: tuple[str, ...], width: int) -> int:
    size = max(MIN_FONT_PX, width // 12)
    while size > MIN_FONT_PX and max(_font(size).getlength(line) for line in lines) > 0.92 * width:
        size -= 1
    return size


@lru_cache(maxsize=64)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """DejaVu Sans Bold where the system has it (it has the em dash), else the font that ships with Pillow."""
    for name in FONT_FILES:
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    return ImageFont.load_default(size=size)


def _orientation(source: Dataset) -> tuple[str, str]:
    value = source.get("PatientOrientation")
    try:
        row, column = (str(v).strip().upper() for v in value) if value is not None and len(value) == 2 else ("", "")
    except TypeError:
        row, column = "", ""
    valid = ("A", "P", "R", "L", "H", "F")  # single directions: highdicom's enumerated values
    if row in valid and column in valid:
        return row, column
    return DEFAULT_PATIENT_ORIENTATION
