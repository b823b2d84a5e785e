"""The input check's pieces on their own: fitted parameters round-trip, each cheap check fires on its case."""

from __future__ import annotations

import numpy as np
import pytest

from app.service import ModelService
from pneumonia.imaging import DecodedImage
from pneumonia.input_check import (
    CHEST_MAX_ASPECT_RATIO,
    MIN_PIXEL_STD,
    InputChecker,
    InputCheckModel,
    channel_features,
    colour_reason,
    pixel_reasons,
    thumbnails,
)


def test_the_fitted_check_round_trips_through_its_file(loaded_service: ModelService, tmp_path):
    model = loaded_service.model.checker.model
    assert model is not None  # export fitted one for the tiny bundle
    model.save(tmp_path / "check.npz")
    again = InputCheckModel.load(tmp_path / "check.npz")
    statistics = [
        np.abs(np.random.default_rng(i).normal(size=(3, 2 * len(d.center) // 2))) for i, d in enumerate(model.depths)
    ]
    assert np.allclose(model.ood_score(statistics), again.ood_score(statistics), rtol=1e-4)
    assert again.threshold == model.threshold and again.layer_names == model.layer_names


def test_channel_features_are_mean_and_standard_deviation():
    activations = np.random.default_rng(0).uniform(0, 6, (2, 5, 5, 3))
    statistics = np.concatenate([activations.mean(axis=(1, 2)), (activations**2).mean(axis=(1, 2))], axis=1)
    features = channel_features(statistics)
    assert np.allclose(features[:, :3], activations.mean(axis=(1, 2)))
    assert np.allclose(features[:, 3:], activations.std(axis=(1, 2)), atol=1e-6)


@pytest.mark.parametrize("size", [(192, 192), (32, 32), (50, 70)])
def test_thumbnails_work_for_any_input_size(size):
    thumbs = thumbnails(np.random.default_rng(0).uniform(0, 255, (2, *size)))
    assert thumbs.shape == (2, 24 * 24)
    assert np.allclose(thumbs.mean(axis=1), 0, atol=1e-6) and np.allclose(thumbs.std(axis=1), 1, atol=1e-3)


def test_each_cheap_check_names_its_number():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:64, 0:64]
    smooth = (60 + 2 * xx + yy).astype(np.float32)
    assert pixel_reasons(smooth, 300, 300, {}) == []
    flat = np.full((64, 64), 100.0)
    assert (
        "near-constant" in pixel_reasons(flat, 300, 300, {})[0]
        and f"{MIN_PIXEL_STD:g}" in pixel_reasons(flat, 300, 300, {})[0]
    )
    assert any("noise" in r for r in pixel_reasons(rng.uniform(0, 255, (64, 64)), 300, 300, {}))
    assert any("aspect" in r for r in pixel_reasons(smooth, int(300 * (CHEST_MAX_ASPECT_RATIO + 1)), 300, {}))
    assert colour_reason(0.0) is None and "colour" in (colour_reason(40.0) or "")


def test_without_a_fitted_model_only_cheap_checks_run_and_it_says_so():
    checker = InputChecker(None, "no detector in this bundle")
    image = DecodedImage(pixels=np.full((64, 64), 100, np.uint8), source_format="PNG")
    result, same = checker.inspect(image, image.pixels.astype(np.float32), "refuse")
    assert same is image and result.detector == "unavailable" and result.note == "no detector in this bundle"
    assert not result.accepted and result.ood_score is None
    off, _ = checker.inspect(image, image.pixels.astype(np.float32), "off")
    assert off.accepted and off.detector == "off" and off.reasons == []
