"""Deterministic checks of the input handling that docs/operating.md promises (in-process, fast)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pneumonia.imaging import CorruptImageError, ImageTooLargeError, UnsupportedFormatError, decode_image
from tests.hardening import corpus


def test_exif_orientation_is_applied():
    data = corpus.exif_rotated_jpeg().files["file"][1]  # stored 200 wide x 256 tall, orientation 6
    image = decode_image(data)
    assert (image.width, image.height) == (256, 200)


def test_palette_transparency_becomes_black():
    pixels = np.full((64, 64), 200, dtype=np.uint8)
    pixels[:32] = 50
    palette_image = Image.fromarray(pixels).convert("P")
    transparent_index = palette_image.getpixel((0, 0))  # the top half (value 50) is made transparent
    buffer = io.BytesIO()
    palette_image.save(buffer, format="PNG", transparency=transparent_index)
    decoded = decode_image(buffer.getvalue()).pixels
    assert decoded[:32].max() == 0 and decoded[32:].min() == 200


def test_sixteen_bit_png_is_stretched_to_the_full_range():
    values = np.linspace(1000, 3000, 64 * 64).reshape(64, 64).astype(np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(values).save(buffer, format="PNG")
    decoded = decode_image(buffer.getvalue()).pixels
    assert decoded.min() == 0 and decoded.max() == 255


def test_png_crc_mismatch_names_the_chunk():
    data = corpus.png_bad_crc().files["file"][1]
    with pytest.raises(CorruptImageError, match="IDAT"):
        decode_image(data)


def _multiframe_dicom(frames: int, side: int = 64) -> bytes:
    from pydicom import dcmread

    dataset = dcmread(io.BytesIO(corpus.dicom_bytes()))
    stack = np.stack([np.full((side, side), 100 * (i + 1), dtype=np.uint16) for i in range(frames)])
    dataset.Rows = dataset.Columns = side
    dataset.NumberOfFrames = frames
    dataset.PixelData = stack.astype("<u2").tobytes()
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_multiframe_dicom_uses_the_first_frame_and_counts_all_frames():
    image = decode_image(_multiframe_dicom(3))
    assert image.source_format == "DICOM" and any("3 frames" in note for note in image.warnings)
    with pytest.raises(ImageTooLargeError, match="3 frames"):
        decode_image(_multiframe_dicom(3), max_pixels=64 * 64 * 2)  # each frame fits, the three do not


@pytest.mark.parametrize(
    ("pillow_format", "plugin", "named"),
    [("TIFF", "TiffImagePlugin.TiffImageFile", "TIFF"), ("PCX", "PcxImagePlugin.PcxImageFile", None)],
)
def test_only_the_jpeg_and_png_parsers_see_an_upload(monkeypatch, pillow_format, plugin, named):
    """Other Pillow plugins (where most of its advisories live) never parse upload bytes."""
    import importlib

    module_name, class_name = plugin.split(".")
    plugin_class = getattr(importlib.import_module(f"PIL.{module_name}"), class_name)

    def must_not_run(self):
        raise AssertionError(f"Pillow's {pillow_format} parser ran on an upload")

    buffer = io.BytesIO()
    Image.new("L", (64, 64), 128).save(buffer, pillow_format)
    monkeypatch.setattr(plugin_class, "_open", must_not_run)
    with pytest.raises(UnsupportedFormatError) as refused:
        decode_image(buffer.getvalue())
    assert (named or "not a recognised image") in str(refused.value)
