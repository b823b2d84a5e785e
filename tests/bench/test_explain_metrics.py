"""bench.explain's faithfulness metrics on synthetic images and a known score, where the right answer is known."""

import numpy as np
import pytest

from bench.explain.metrics import (
    BLOCK,
    area,
    block_ranking,
    bootstrap_mean,
    curves,
    masks,
    perturbed,
    road_impute,
    spearman,
)
from bench.explain.run import choose_default

SIZE = 32
FRACTIONS = np.linspace(0.0, 1.0, 9)


def bright_square_score(images: np.ndarray) -> np.ndarray:
    """A 'model' whose logit is the mean brightness of the top-left quarter (its only evidence)."""
    return images[:, : SIZE // 2, : SIZE // 2].mean(axis=(1, 2)) / 255.0 * 10.0


def test_masks_replace_the_first_blocks_of_the_order():
    grid = (SIZE // BLOCK, SIZE // BLOCK)
    order = np.arange(grid[0] * grid[1])
    replaced = masks(order, grid, np.array([0.0, 0.25, 1.0]))
    assert replaced.shape == (3, SIZE, SIZE)
    assert not replaced[0].any() and replaced[2].all()
    assert replaced[1].sum() == 16 * BLOCK * BLOCK and replaced[1][: BLOCK * 2].all()  # the first two block rows


def test_ranking_puts_the_hot_block_first():
    saliency = np.zeros((SIZE, SIZE), np.float32)
    saliency[8:12, 12:16] = 1.0
    order = block_ranking(saliency, np.random.default_rng(0))
    assert order[0] == 2 * (SIZE // BLOCK) + 3


@pytest.mark.parametrize("scheme", ["blur", "mean", "road"])
def test_kept_pixels_are_untouched(scheme):
    image = np.random.default_rng(0).uniform(0, 255, (SIZE, SIZE)).astype(np.float32)
    replaced = np.zeros((2, SIZE, SIZE), bool)
    replaced[1, :16] = True
    out = perturbed(image, replaced, scheme, np.random.default_rng(0))
    assert np.array_equal(out[0], image) and np.array_equal(out[1][16:], image[16:])
    assert not np.allclose(out[1][:16], image[:16])


def test_road_imputes_from_the_kept_neighbours_not_the_removed_content():
    ramp = np.tile(np.linspace(0, 248, SIZE, dtype=np.float32), (SIZE, 1))  # brightness rises left to right
    image = ramp.copy()
    image[12:20, 12:20] = 255.0  # a bright patch that must not leak into its own replacement
    removed = np.zeros((SIZE, SIZE), bool)
    removed[12:20, 12:20] = True
    out = road_impute(image, removed, np.random.default_rng(0))
    assert np.abs(out[removed] - ramp[removed]).mean() < 12.0  # close to the ramp, far from 255
    assert np.array_equal(out[~removed], image[~removed])
    everything = road_impute(image, np.ones_like(removed), np.random.default_rng(0))
    assert abs(everything.mean() - image.mean()) < 2.0


@pytest.mark.parametrize("scheme", ["blur", "mean", "road"])
def test_a_faithful_map_scores_a_positive_gap_and_the_inverted_map_a_negative_one(scheme):
    rng = np.random.default_rng(1)
    image = rng.uniform(40, 80, (SIZE, SIZE)).astype(np.float32)
    image[: SIZE // 2, : SIZE // 2] += 150.0  # the evidence
    right = np.zeros((SIZE, SIZE), np.float32)
    right[: SIZE // 2, : SIZE // 2] = 1.0
    gaps = {}
    for name, saliency in {"right": right, "inverted": 1.0 - right}.items():
        c = curves(image, saliency, 1.0, bright_square_score, scheme, FRACTIONS, seed=0)
        assert c["morf"][0] == c["lerf"][0] and c["morf"][-1] == c["lerf"][-1]  # shared endpoints
        gaps[name] = area(c["lerf"], FRACTIONS) - area(c["morf"], FRACTIONS)
    assert gaps["right"] > 1.0 and gaps["inverted"] < -1.0


def test_the_sign_explains_the_other_class():
    image = np.full((SIZE, SIZE), 200.0, np.float32)
    c = curves(image, np.ones((SIZE, SIZE), np.float32), -1.0, bright_square_score, "mean", FRACTIONS, seed=0)
    assert c["morf"][0] == pytest.approx(-bright_square_score(image[None])[0])


def test_area_is_the_mean_height():
    assert area(np.full(9, 3.0), FRACTIONS) == pytest.approx(3.0)
    assert area(FRACTIONS, FRACTIONS) == pytest.approx(0.5)


def test_spearman_of_maps():
    a = np.random.default_rng(0).random((8, 8))
    assert spearman(a, a) == pytest.approx(1.0) and spearman(a, -a) == pytest.approx(-1.0)
    assert spearman(a, np.zeros_like(a)) == 0.0 and spearman(np.ones_like(a), np.ones_like(a)) == 1.0


def test_bootstrap_interval_brackets_the_mean():
    values = np.random.default_rng(0).normal(2.0, 1.0, 60)
    stat = bootstrap_mean(values)
    assert stat["ci_low"] < stat["mean"] < stat["ci_high"] and stat["n"] == 60
    assert bootstrap_mean(np.full(10, 4.0))["ci_low"] == bootstrap_mean(np.full(10, 4.0))["ci_high"] == 4.0


def _row(gap: float, beats: bool, passes: bool) -> dict:
    schemes = {s: {"gap": {"mean": gap}} for s in ("blur", "mean", "road")}
    return {"schemes": schemes, "beats_baselines": beats, "randomisation": {"passes": passes}}


def test_default_is_the_best_method_meeting_both_criteria_else_the_served_one():
    summary = {
        "a": _row(3.0, True, False),  # best gap but fails the randomisation check
        "b": _row(2.0, True, True),
        "c": _row(1.0, True, True),
        "central_blob": _row(9.0, False, False),
    }
    assert choose_default(summary)[0] == "b"
    method, reason = choose_default({"a": _row(3.0, False, True)})
    assert "no method" in reason
