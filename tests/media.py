"""Test images built on the fly: PNG variants, DICOM (MONOCHROME1/2), a decompression-bomb header.

Shared by tests/integration and tests/hardening (`from tests.media import ...`)."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def gray_of(jpeg_path) -> np.ndarray:
    """A sample X-ray as uint8 grayscale stretched to the full 0..255 range."""
    pixels = np.asarray(Image.open(jpeg_path).convert("L"), dtype=np.float64)
    pixels = (pixels - pixels.min()) * 255.0 / (pixels.max() - pixels.min())
    return np.round(pixels).astype(np.uint8)


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def png_variants(gray: np.ndarray) -> dict[str, bytes]:
    l8 = Image.fromarray(gray)
    rgba = Image.merge("RGBA", (l8, l8, l8, Image.new("L", l8.size, 255)))
    return {
        "gray8": png(l8),
        "gray16": png(Image.fromarray(gray.astype(np.uint16) * 257)),  # same image on a 16-bit scale
        "rgb": png(l8.convert("RGB")),
        "rgba": png(rgba),
        "palette": png(l8.convert("P")),
    }


def dicom(
    stored: np.ndarray,
    photometric: str,
    *,
    slope: float,
    intercept: float,
    center: float,
    width: float,
    **tags: str,
) -> bytes:
    """A minimal valid DICOM file (explicit VR little endian) with 12-bit unsigned pixels; `tags` set further
    attributes by keyword (PatientAge="045Y", ViewPosition="LL", Modality="CT", ...)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.PatientName = "Test^Synthetic"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    ds.WindowCenter, ds.WindowWidth = center, width
    ds.PixelData = stored.astype("<u2").tobytes()
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def png_chunk(kind: bytes, data: bytes, crc: int | None = None) -> bytes:
    """A PNG chunk; pass `crc` to write a wrong checksum on purpose."""
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF if crc is None else crc
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def png_bomb(width: int = 50_000, height: int = 50_000) -> bytes:
    """A tiny PNG whose header claims width x height 8-bit gray pixels."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(b"\0" * 1024))
        + png_chunk(b"IEND", b"")
    )
