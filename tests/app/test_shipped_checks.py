"""The shipped bundle's image-quality and population checks on the committed samples (tests/data/samples), and
each quality rule acting by its own action: what the checks catch, and, stated as measured, what they do not."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pneumonia.bundle import ImageQualitySpec
from pneumonia.errors import ErrorCode
from pneumonia.imaging import decode_image
from pneumonia.input_check import InputChecker
from pneumonia.model import Model
from tests.support import SHIPPED_BUNDLE
from training.stress import contrast

WASHED_OUT_NORMAL = "IM-0511-0001-0002.jpeg"


@pytest.fixture(scope="module")
def shipped_model() -> Iterator[Model]:
    yield Model.load(SHIPPED_BUNDLE, explain=False)


def _jpeg(image: Image.Image, quality: int = 92) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _png(gray: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(gray).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_normal_film_at_half_contrast_inside_the_training_range_is_accepted(shipped_model, sample_images):
    """The issue's example, as it really comes out: this normal sample at contrast 0.5 (training.stress.contrast)
    keeps a 5th-95th percentile spread of 99 gray levels, above the range's limit of 85 (the lowest 0.25% of the
    training films): training films cover that spread, so the contrast rule does not flag it, nothing else does,
    and the model calls it PNEUMONIA (about 0.93). A range measured on the training films cannot catch a film the
    training films resemble; results/population shows the flagged and unflagged films at contrast 0.5 are answered
    about equally badly (specificity 0.62 and 0.69), so a tighter limit would refuse films without selecting the
    ones answered wrongly."""
    path = next(p for p in sample_images["NORMAL"] if p.name == WASHED_OUT_NORMAL)
    gray = np.asarray(Image.open(path).convert("L"))
    washed = contrast(0.5)(gray, np.random.default_rng(0))
    assessed = shipped_model.decode_and_assess(_png(washed), "refuse")  # refused would raise ImageRefusedError
    check, spec = assessed.check, shipped_model.metadata.image_quality
    assert spec is not None and check.accepted and check.refusal_code is None
    assert check.measurements["dynamic_range"] > spec.min_dynamic_range
    assert not any("contrast" in reason or "exposed" in reason for reason in check.reasons)
    assert assessed.probability >= shipped_model.metadata.operating_point().threshold  # the wrong answer it gives


def _shortcut_variants(path: Path) -> dict[str, bytes]:
    """What differs between archives (issue 19 section 3): resolution, JPEG quality and a border."""
    image = Image.open(path).convert("L")
    variants = {}
    for side in (512, 128):
        scale = side / max(image.size)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        variants[f"{side} px"] = _jpeg(image.resize(size, Image.Resampling.BILINEAR))
    variants["JPEG quality 40"] = _jpeg(image, quality=40)
    border = max(1, image.width // 20)
    framed = Image.new("L", (image.width + 2 * border, image.height + 2 * border), 0)
    framed.paste(image, (border, border))
    variants["black border"] = _jpeg(framed)
    return variants


def test_the_population_check_learned_no_archive_shortcut(shipped_model, sample_images):
    """Every committed pediatric sample the shipped check accepts as it is, resized to 512 and 128 px, re-saved at
    JPEG quality 40, or framed by a black border (5% of its width): the learned population check keeps it inside
    the population, and the resized and re-compressed copies are accepted outright.

    The black border is not accepted: the out-of-distribution detector, not the population check, refuses it as
    not_a_chest_xray (measured OOD scores 2.8-4.5 against a threshold of 1.43; even a 0.5% border is refused for
    half of the samples). That is a limit of the OOD detector, documented in docs/input-check.md."""
    samples = [p for paths in sample_images.values() for p in paths]
    clean = [p for p in samples if shipped_model.decode_and_assess(p.read_bytes(), "warn").check.accepted]
    assert len(clean) >= 4, "most committed samples are accepted as they are"
    for path in clean:
        for name, data in _shortcut_variants(path).items():
            check = shipped_model.decode_and_assess(data, "warn").check
            assert check.population == "inside", (path.name, name, check.population_score)
            assert check.refusal_code != ErrorCode.OUTSIDE_POPULATION, (path.name, name)
            if name == "black border":
                assert check.refusal_code in (None, ErrorCode.NOT_A_CHEST_XRAY), (path.name, check.reasons)
            else:
                assert check.accepted, (path.name, name, check.reasons)


SPEC = ImageQualitySpec(min_dynamic_range=80.0, min_mean=70.0, max_mean=180.0, measured_on="test", action="refuse",
                        evidence="contrast evidence", exposure_action="warn", exposure_evidence="exposure evidence")  # fmt: skip


def _verdict(spec: ImageQualitySpec, gray: np.ndarray):
    checker = InputChecker(None, "no detector in this test", quality=spec)
    check, _ = checker.inspect(decode_image(_png(gray)), gray.astype(np.float32), "refuse")
    return check


def test_each_quality_rule_acts_by_its_own_action():
    """Contrast refused, exposure warned (as the evidence chose for the shipped bundle); a bundle written before
    the rules had their own actions (exposure_action None) applies `action` to both."""
    dark = np.tile(np.linspace(0, 120, 96), (96, 1)).astype(np.uint8)  # mean 60: underexposed; spread 108: fine
    flat = np.tile(np.linspace(90, 150, 96), (96, 1)).astype(np.uint8)  # mean 120: fine; spread 54: low contrast
    underexposed = _verdict(SPEC, dark)
    assert underexposed.accepted and underexposed.refusal_code is None
    assert any(
        r.startswith("underexposed") and r.endswith("the answer may be unreliable") for r in underexposed.reasons
    )
    low_contrast = _verdict(SPEC, flat)
    assert low_contrast.refusal_code == ErrorCode.POOR_IMAGE_QUALITY and not low_contrast.accepted
    older = _verdict(SPEC.model_copy(update={"exposure_action": None, "exposure_evidence": None}), dark)
    assert older.refusal_code == ErrorCode.POOR_IMAGE_QUALITY and any("underexposed" in r for r in older.reasons)
