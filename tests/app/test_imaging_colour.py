"""The colour check in decode_image: same statistic as the reference formula, same notes, and cheap."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pneumonia.imaging import COLOUR_NOTE_THRESHOLD, colour_deviation, decode_image


def reference_deviation(rgb: np.ndarray) -> float:
    """The original (slow) formula: mean |channel - per-pixel channel mean| over all pixels and channels."""
    rgb = rgb.astype(np.int16)
    return float(np.abs(rgb - rgb.mean(axis=2, keepdims=True)).mean())


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("spread", [0, 3, 12, 255])
def test_colour_deviation_matches_the_reference_formula(seed, spread):
    rng = np.random.default_rng(seed)
    gray = rng.integers(0, 256, (67, 45, 1))
    noise = rng.integers(-spread, spread + 1, (67, 45, 3))
    rgb = np.clip(gray + noise, 0, 255).astype(np.uint8)
    assert colour_deviation(rgb) == pytest.approx(reference_deviation(rgb), abs=1e-4)


def test_gray_rgb_has_zero_deviation():
    gray = np.random.default_rng(0).integers(0, 256, (40, 50), dtype=np.uint8)
    assert colour_deviation(np.repeat(gray[:, :, None], 3, axis=2)) == 0.0


def _jpeg(rgb: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb, mode="RGB").save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def test_rgb_xray_gets_no_note_and_a_colour_photo_does(sample_images):
    xray = decode_image(sample_images["NORMAL"][0].read_bytes())  # stored as an RGB JPEG
    assert not xray.warnings
    yy, xx = np.mgrid[0:96, 0:96]
    photo = np.stack([xx * 2, yy * 2, 255 - xx - yy], axis=2).clip(0, 255).astype(np.uint8)
    assert colour_deviation(photo) > COLOUR_NOTE_THRESHOLD
    assert any("colour" in w for w in decode_image(_jpeg(photo)).warnings)
