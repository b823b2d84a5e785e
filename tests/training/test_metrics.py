"""Metrics against scikit-learn, operating points on known scores, calibration."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as sk

from training.metrics import (
    binary_metrics,
    bootstrap_intervals,
    calibrate,
    expected_calibration_error,
    fit_platt,
    operating_points,
    sigmoid,
)

RNG = np.random.default_rng(0)
Y = np.array([0] * 300 + [1] * 700)
P = np.clip(np.where(Y == 1, RNG.normal(0.7, 0.2, Y.size), RNG.normal(0.35, 0.2, Y.size)), 0, 1)


def test_threshold_metrics_match_scikit_learn():
    m = binary_metrics(Y, P, 0.5)
    predicted = (P >= 0.5).astype(int)
    assert m["accuracy"] == pytest.approx(sk.accuracy_score(Y, predicted))
    assert m["precision"] == pytest.approx(sk.precision_score(Y, predicted))
    assert m["sensitivity"] == pytest.approx(sk.recall_score(Y, predicted))
    assert m["specificity"] == pytest.approx(sk.recall_score(Y, predicted, pos_label=0))
    assert m["f1"] == pytest.approx(sk.f1_score(Y, predicted))
    assert m["roc_auc"] == pytest.approx(sk.roc_auc_score(Y, P))
    assert m["pr_auc"] == pytest.approx(sk.average_precision_score(Y, P))
    assert m["brier"] == pytest.approx(sk.brier_score_loss(Y, P))


def test_expected_calibration_error_on_known_cases():
    y = np.array([1, 1, 0, 0])
    assert expected_calibration_error(y, np.array([1.0, 1.0, 0.0, 0.0])) == pytest.approx(0.0)
    # every prediction 0.9 but only half positive: |0.5 - 0.9| = 0.4
    assert expected_calibration_error(y, np.full(4, 0.9)) == pytest.approx(0.4)


def test_operating_points_on_known_scores():
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1])
    p = np.array(
        [0.1, 0.2, 0.3, 0.6, 0.05, 0.4, 0.5, 0.55, 0.65, 0.7, 0.72, 0.75, 0.8, 0.82, 0.85, 0.9, 0.92, 0.95, 0.97, 0.99]
    )
    points = {pt.name: pt for pt in operating_points(y, p)}
    # 16 positives: sensitivity >= 0.95 needs 16 of 16 (15/16 = 0.9375), so the threshold drops to 0.05
    assert points["sensitivity_95"].threshold == pytest.approx(0.05)
    assert points["sensitivity_95"].sensitivity == 1.0
    # Youden: threshold 0.65 gives sens 12/16, spec 4/4 -> J = 0.75, the maximum
    assert points["youden"].threshold == pytest.approx(0.65)
    assert points["youden"].specificity == 1.0
    assert points["balanced_0.5"].threshold == 0.5
    assert points["max_f1"].threshold <= points["youden"].threshold


def test_sensitivity_95_is_the_highest_threshold_meeting_the_floor():
    points = {pt.name: pt for pt in operating_points(Y, P)}
    t = points["sensitivity_95"].threshold
    assert (P[Y == 1] >= t).mean() >= 0.95
    higher = np.unique(P[P > t])
    assert higher.size == 0 or (P[Y == 1] >= higher.min()).mean() < 0.95


def test_bootstrap_intervals_contain_the_point_estimate():
    intervals = bootstrap_intervals(Y, P, 0.5, samples=200, seed=1)
    for name in ("roc_auc", "sensitivity", "specificity"):
        e = intervals[name]
        assert e.ci_low is not None and e.ci_high is not None
        assert e.ci_low <= e.value <= e.ci_high
        assert e.ci_high - e.ci_low < 0.15


def test_platt_recovers_a_known_miscalibration_and_fixes_ece():
    rng = np.random.default_rng(2)
    true_logits = rng.normal(0, 2, 20000)
    y = (rng.random(true_logits.size) < sigmoid(true_logits)).astype(int)
    distorted = (true_logits - 1.0) * 3.0  # overconfident and shifted, as class weighting shifts a logit
    scale, bias = fit_platt(y, distorted)
    assert scale == pytest.approx(1 / 3.0, rel=0.1) and bias == pytest.approx(1.0, abs=0.1)
    before = sigmoid(distorted)
    after = calibrate(before, scale, bias)
    assert expected_calibration_error(y, after) < 0.02 < expected_calibration_error(y, before)
    assert sk.roc_auc_score(y, after) == pytest.approx(sk.roc_auc_score(y, before), rel=1e-4)


def test_stress_youden_moves_the_threshold_with_perturbed_predictions():
    y = np.array([0] * 50 + [1] * 50)
    clean = np.concatenate([np.linspace(0.0, 0.4, 50), np.linspace(0.6, 1.0, 50)])
    inflated = {"blur": np.clip(clean + 0.3, 0, 1)}  # a perturbation that pushes every score up
    points = {p.name: p for p in operating_points(y, clean, inflated)}
    assert "stress_youden" in points and "stress_youden" not in {p.name for p in operating_points(y, clean)}
    assert points["stress_youden"].threshold > points["youden"].threshold
    # a compromise between the clean optimum (0.4-0.6) and the perturbed one (0.7-0.9)
    assert 0.6 <= points["stress_youden"].threshold <= 0.7 and points["stress_youden"].specificity == 1.0
