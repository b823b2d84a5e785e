"""Bytes -> decoded X-ray -> model input. The one preprocessing path, shared by training and serving.

`decode_image` turns uploaded bytes (JPEG, PNG or DICOM; the format is sniffed from the bytes, never taken
from a file name or Content-Type) into an 8-bit grayscale array. `to_model_input` resizes it to the
model's input size and replicates it to RGB float32 0..255; all further scaling lives inside the model.
Training decodes every image through these same two functions, so serving cannot drift from training.
"""

from __future__ import annotations

import datetime
import io
import os
import struct
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pneumonia.errors import ErrorCode, PneumoniaError

# The files every folder walker takes as images (batch scoring, training's dataset scan, adapt, calibrate).
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".dcm", ".dicom"})
DICOM_MAGIC_OFFSET = 128
DICOM_MAGIC = b"DICM"
DEFAULT_MAX_PIXELS = 50_000_000
MIN_SIDE = 32
DECODE_MAX_ASPECT_RATIO = 8.0  # decoding refuses a longer side over 8x the shorter (bad_dimensions)
COLOUR_NOTE_THRESHOLD = 8.0  # colour_deviation above this: the upload gets a "is this an X-ray?" warning
# Pillow is only ever asked to parse these: the header parsers of its ~40 other format plugins (where most
# of its advisories live: PSD, FITS, McIdas, ...) are never reached by an upload.
PIL_FORMATS = ("JPEG", "PNG")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
# Formats refused by their signature alone, so the error can name them without parsing them.
_REFUSED_SIGNATURES = (
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"BM", "BMP"),
    (b"8BPS", "PSD"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (b"\xff\x4f\xff\x51", "JPEG 2000"),
)
# What Pillow and pydicom raise for damaged or hostile files (beyond their own error types).
_DECODER_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    IndexError,
    TypeError,
    KeyError,
    struct.error,
    zlib.error,
)

# Decoder warnings can quote bytes of the upload (pydicom: "Invalid value for VR UI: '<file content>'"); the
# service's stderr is its log, so they must not be printed. Uploads are validated by raising, not warning.
warnings.filterwarnings("ignore", category=UserWarning, module=r"(pydicom|PIL)(\.|$)")


class ImageInputError(PneumoniaError, ValueError):
    """An upload that cannot be used as a chest X-ray. `code` is stable and machine-readable."""

    code = ErrorCode.INVALID_IMAGE


class EmptyImageError(ImageInputError):
    code = ErrorCode.EMPTY_FILE


class UnsupportedFormatError(ImageInputError):
    code = ErrorCode.UNSUPPORTED_FORMAT


class CorruptImageError(ImageInputError):
    code = ErrorCode.CORRUPT_IMAGE


class ImageTooLargeError(ImageInputError):
    code = ErrorCode.TOO_MANY_PIXELS


class ImageShapeError(ImageInputError):
    code = ErrorCode.BAD_DIMENSIONS


@dataclass(frozen=True)
class DicomTags:
    """The acquisition attributes of a DICOM upload that the input check reads (pneumonia.population).

    No patient identifier is kept: the birth date is reduced to an age here and dropped, and the age itself is
    a number of years. None means the tag was absent or unreadable ("unknown" in the verdict, never a reason).
    """

    modality: str | None = None
    view_position: str | None = None
    body_part: str | None = None
    age_years: float | None = None
    age_source: str | None = None  # "PatientAge" or "PatientBirthDate and StudyDate" (names, never values)


@dataclass(frozen=True)
class DecodedImage:
    """An 8-bit grayscale image as decoded from the upload, before resizing."""

    pixels: np.ndarray  # (H, W) uint8
    source_format: str  # "JPEG", "PNG" or "DICOM"
    warnings: tuple[str, ...] = field(default=())
    colour_deviation: float = 0.0  # mean channel spread of a colour upload (0 for grayscale); pneumonia.input_check
    dicom: DicomTags | None = None  # DICOM uploads only

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])


def decode_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodedImage:
    """Decode JPEG, PNG or DICOM bytes into an 8-bit grayscale image, or raise an `ImageInputError`."""
    if not data:
        raise EmptyImageError("The uploaded file is empty.")
    if data[DICOM_MAGIC_OFFSET : DICOM_MAGIC_OFFSET + 4] == DICOM_MAGIC:
        return _decode_dicom(data, max_pixels)
    return _decode_pillow(data, max_pixels)


def to_model_input(image: DecodedImage | np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a grayscale image to `size` (height, width) and return float32 RGB 0..255 of shape (H, W, 3)."""
    pixels = image.pixels if isinstance(image, DecodedImage) else image
    if pixels.dtype != np.uint8 or pixels.ndim != 2:
        raise ValueError(f"expected a 2-D uint8 grayscale image, got {pixels.dtype} {pixels.shape}")
    height, width = size
    resized = Image.fromarray(pixels).resize((width, height), Image.Resampling.BILINEAR)
    gray = np.asarray(resized, dtype=np.float32)  # (H, W)
    return np.repeat(gray[:, :, None], 3, axis=2)  # (H, W, 3)


def load_model_input(path: Path, size: tuple[int, int], *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode a file from disk exactly as the service decodes an upload. Used by training."""
    return to_model_input(decode_image(Path(path).read_bytes(), max_pixels=max_pixels), size)


def _check_dimensions(width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"The image is {width}x{height} pixels ({width * height:,}); the limit is {max_pixels:,} pixels."
        )
    if min(width, height) < MIN_SIDE:
        raise ImageShapeError(f"The image is {width}x{height} pixels; each side must be at least {MIN_SIDE}.")
    if max(width, height) / min(width, height) > DECODE_MAX_ASPECT_RATIO:
        raise ImageShapeError(
            f"The image is {width}x{height} pixels; "
            f"an aspect ratio above {DECODE_MAX_ASPECT_RATIO:g}:1 is not a chest X-ray."
        )


def _short(exc: BaseException, limit: int = 160) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= limit else text[:limit] + "…"


def _check_png_crcs(data: bytes) -> None:
    """Pillow does not check the CRC of IDAT chunks: a bit flip in the pixel data would decode silently."""
    view = memoryview(data)
    pos = len(PNG_MAGIC)
    while pos + 12 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        end = pos + 12 + length
        if end > len(data):
            return  # truncated: reported by the decoder
        (crc,) = struct.unpack_from(">I", data, end - 4)
        if zlib.crc32(view[pos + 4 : end - 4]) & 0xFFFFFFFF != crc:
            name = kind.decode("ascii") if kind.isalpha() else f"at byte {pos}"
            raise CorruptImageError(f"The PNG file is damaged: the CRC of its {name} chunk does not match.")
        if kind == b"IEND":
            return
        pos = end


def _refused_format_name(data: bytes) -> str | None:
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    return next((name for signature, name in _REFUSED_SIGNATURES if data.startswith(signature)), None)


def _decode_pillow(data: bytes, max_pixels: int) -> DecodedImage:
    if data.startswith(PNG_MAGIC):
        _check_png_crcs(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=PIL_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow's own text names its limit and a "DOS attack"; the caller needs this service's limit
        raise ImageTooLargeError(
            f"The image declares more pixels than Pillow will decode safely; the limit here is {max_pixels:,} "
            "pixels (width x height). Downscale it first."
        ) from exc
    except UnidentifiedImageError as exc:
        if data.startswith((PNG_MAGIC, JPEG_MAGIC)):
            kind = "PNG" if data.startswith(PNG_MAGIC) else "JPEG"
            raise CorruptImageError(f"The {kind} file is damaged: its header cannot be read.") from exc
        name = _refused_format_name(data)
        reason = f"{name} images are not supported." if name else "The file is not a recognised image."
        raise UnsupportedFormatError(f"{reason} Upload a JPEG, PNG or DICOM chest X-ray.") from exc
    except _DECODER_ERRORS as exc:  # e.g. truncated header chunks, oversized PNG text chunks
        raise CorruptImageError(f"The image file is damaged or truncated ({_short(exc)}).") from exc
    with image:
        _check_dimensions(image.width, image.height, max_pixels)
        source_format = str(image.format)  # exif_transpose returns a copy whose .format is None
        notes: list[str] = []
        try:
            image.load()
            gray, deviation = _pil_to_gray(ImageOps.exif_transpose(image))
        except _DECODER_ERRORS as exc:  # Pillow reports broken streams (and broken EXIF) this way
            raise CorruptImageError(f"The {source_format} file is damaged or truncated ({_short(exc)}).") from exc
    if deviation > COLOUR_NOTE_THRESHOLD:
        notes.append("The image has colour content; chest X-rays are grayscale. Is this an X-ray?")
    return DecodedImage(pixels=gray, source_format=source_format, warnings=tuple(notes), colour_deviation=deviation)


def _pil_to_gray(image: Image.Image) -> tuple[np.ndarray, float]:
    """Any Pillow mode -> ((H, W) uint8, colour deviation). Deeper-than-8-bit data is stretched min..max."""
    mode = image.mode
    if mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        return _stretch_to_uint8(np.asarray(image, dtype=np.float64)), 0.0
    if mode in ("P", "PA", "LA", "RGBA", "La", "RGBa"):
        # Transparent pixels become black (the background of an X-ray), not an arbitrary palette colour.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode != "L":
        deviation = colour_deviation(np.asarray(image.convert("RGB")))
        return np.asarray(image.convert("L"), dtype=np.uint8), deviation
    return np.asarray(image, dtype=np.uint8), 0.0


def colour_deviation(rgb: np.ndarray) -> float:
    """Mean absolute deviation of R, G and B from their per-pixel mean (0 for a gray image), in 0..255 units.

    The value of `np.abs(rgb - rgb.mean(axis=2, keepdims=True)).mean()`, computed exactly in integers as
    sum |3c - (r + g + b)| / 9 per pixel, one channel plane at a time: numpy reductions over a 3-wide last
    axis are slow (that one line was >90% of decode_image for RGB JPEGs), and int16 planes are about 3x
    faster than float32 ones (0.13 against 0.4 ms for a 224x224 sample; bench/).
    """
    r, g, b = (rgb[..., i].astype(np.int16) for i in range(3))  # 3 x 255 fits in int16
    total = r + g + b
    deviation = sum(int(np.abs(3 * channel - total).sum(dtype=np.int64)) for channel in (r, g, b))
    return deviation / (9.0 * total.size)


def _stretch_to_uint8(values: np.ndarray) -> np.ndarray:
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.round((values - low) * (255.0 / (high - low))).astype(np.uint8)


def _decode_dicom(data: bytes, max_pixels: int) -> DecodedImage:
    """pydicom parses elements lazily, so a damaged element can raise almost anywhere: map it all to 422."""
    from pydicom.errors import BytesLengthException, InvalidDicomError

    try:
        return _decode_dicom_dataset(data, max_pixels)
    except ImageInputError:
        raise
    except (InvalidDicomError, BytesLengthException, NotImplementedError, AttributeError, OverflowError,
            ZeroDivisionError, *_DECODER_ERRORS) as exc:  # fmt: skip
        raise CorruptImageError(f"The DICOM file could not be read ({_short(exc)}).") from exc


def _decode_dicom_dataset(data: bytes, max_pixels: int) -> DecodedImage:
    import pydicom  # imported lazily: only DICOM uploads pay for it
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    dataset = pydicom.dcmread(io.BytesIO(data))
    if "PixelData" not in dataset:
        raise CorruptImageError("The DICOM file has no pixel data (is it a report or structured document?).")
    rows, columns = int(dataset.get("Rows", 0)), int(dataset.get("Columns", 0))
    _check_dimensions(columns, rows, max_pixels)
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    if frames * rows * columns > max_pixels:  # pixel_array decodes every frame
        raise ImageTooLargeError(
            f"The DICOM has {frames} frames of {columns}x{rows} pixels ({frames * rows * columns:,} in all); "
            f"the limit is {max_pixels:,} pixels."
        )
    notes: list[str] = []
    try:
        pixels = dataset.pixel_array
    except (NotImplementedError, RuntimeError) as exc:
        raise UnsupportedFormatError(
            f"This DICOM transfer syntax cannot be decoded here ({dataset.file_meta.get('TransferSyntaxUID', '?')})."
        ) from exc
    except (ValueError, AttributeError, TypeError, KeyError, EOFError) as exc:
        raise CorruptImageError(f"The DICOM pixel data is damaged ({exc}).") from exc
    samples = int(dataset.get("SamplesPerPixel", 1) or 1)
    if frames > 1:
        pixels = pixels[0]
        notes.append(f"The DICOM has {frames} frames; only the first was used.")
    if samples == 1:
        values = apply_voi_lut(apply_modality_lut(pixels, dataset), dataset).astype(np.float64)
        if str(dataset.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
            values = values.max() - values  # MONOCHROME1: low values are white
        deviation = 0.0
    else:
        rgb = np.asarray(pixels)
        deviation = colour_deviation(_stretch_to_uint8(rgb.astype(np.float64))) if rgb.ndim == 3 else 0.0
        values = rgb.astype(np.float64).mean(axis=-1)
    if values.ndim != 2:
        raise CorruptImageError(f"Unexpected DICOM pixel array shape {values.shape}.")
    return DecodedImage(
        pixels=_stretch_to_uint8(values),
        source_format="DICOM",
        warnings=tuple(notes),
        colour_deviation=deviation,
        dicom=read_dicom_tags(dataset),
    )


_AGE_UNITS = {"D": 1 / 365.25, "W": 7 / 365.25, "M": 1 / 12, "Y": 1.0}
_DATE_TAGS = ("StudyDate", "AcquisitionDate", "ContentDate", "SeriesDate")


def _text(dataset, keyword: str) -> str | None:
    try:
        value = str(dataset.get(keyword, "") or "").strip().upper()
    except Exception:  # pydicom decodes lazily: a damaged element must not fail the upload over a tag
        return None
    return value or None


def parse_age_string(value: str | None) -> float | None:
    """DICOM AS ("045Y", "006M", "010W", "003D") -> years; None when absent or malformed."""
    if not value or len(value) != 4 or not value[:3].isdigit() or value[3] not in _AGE_UNITS:
        return None
    return int(value[:3]) * _AGE_UNITS[value[3]]


def _parse_date(value: str | None) -> datetime.date | None:
    try:
        return datetime.datetime.strptime(value[:8], "%Y%m%d").date() if value else None
    except ValueError:
        return None


def read_dicom_tags(dataset) -> DicomTags:
    """Modality, view, body part and the patient's age (from PatientAge, else birth date and a study date)."""
    age, source = parse_age_string(_text(dataset, "PatientAge")), "PatientAge"
    if age is None:
        born = _parse_date(_text(dataset, "PatientBirthDate"))
        taken = next((d for d in (_parse_date(_text(dataset, t)) for t in _DATE_TAGS) if d is not None), None)
        if born is not None and taken is not None and taken >= born:
            age, source = (taken - born).days / 365.25, "PatientBirthDate and StudyDate"
    return DicomTags(
        modality=_text(dataset, "Modality"),
        view_position=_text(dataset, "ViewPosition"),
        body_part=_text(dataset, "BodyPartExamined"),
        age_years=None if age is None else round(age, 2),
        age_source=None if age is None else source,
    )


def is_extensionless_dicom(path: Path) -> bool:
    """DICOM archives often name files without an extension; those are recognised by their magic bytes."""
    if path.suffix:
        return False
    try:
        with path.open("rb") as handle:
            handle.seek(DICOM_MAGIC_OFFSET)
            return handle.read(len(DICOM_MAGIC)) == DICOM_MAGIC
    except OSError:
        return False


def find_images(root: Path) -> list[str]:
    """Relative POSIX paths of every JPEG/PNG/DICOM file under root, sorted (a stable order for resuming)."""
    found = []
    for directory, _, names in os.walk(root):
        for name in names:
            path = Path(directory) / name
            if path.suffix.lower() in IMAGE_SUFFIXES or is_extensionless_dicom(path):
                found.append(path.relative_to(root).as_posix())
    return sorted(found)
