"""Metrics, bootstrap intervals, named operating points and Platt calibration.

Every threshold here is chosen on validation predictions only; callers never pass test data to
`operating_points` or `fit_platt`.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    confusion_matrix,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

from pneumonia.bundle import Estimate, OperatingPoint, SplitMetrics
from pneumonia.labels import positive_mask

TARGET_SENSITIVITY = 0.95
_EPS = 1e-7


def reliability_curve(y: np.ndarray, p: np.ndarray, bins: int = 15) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per non-empty equal-width bin of P(positive): mean prediction, observed positive rate, count."""
    y, p = np.asarray(y, dtype=float), np.asarray(p, dtype=float)
    index = np.clip(np.digitize(p, np.linspace(0.0, 1.0, bins + 1)[1:-1]), 0, bins - 1)
    present = np.unique(index)
    confidence = np.array([p[index == b].mean() for b in present])
    observed = np.array([y[index == b].mean() for b in present])
    counts = np.array([(index == b).sum() for b in present])
    return confidence, observed, counts


def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = 15) -> float:
    """Weighted mean |observed rate - mean prediction| over the bins of `reliability_curve`."""
    confidence, observed, counts = reliability_curve(y, p, bins)
    return float(np.sum(counts * np.abs(observed - confidence)) / counts.sum())


def confusion(y: np.ndarray, p: np.ndarray, threshold: float) -> np.ndarray:
    """[[TN, FP], [FN, TP]]; a case is positive when p >= threshold (as the service labels it)."""
    return confusion_matrix(y, positive_mask(p, threshold).astype(int), labels=[0, 1])


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator / denominator) if denominator else 0.0


def binary_metrics(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, float]:
    y = np.asarray(y, dtype=int)
    p = np.asarray(p, dtype=float)
    (tn, fp), (fn, tp) = confusion(y, p, threshold)
    precision = _ratio(tp, tp + fp)
    sensitivity = _ratio(tp, tp + fn)
    both_classes = len(np.unique(y)) == 2
    return {
        "accuracy": _ratio(tp + tn, len(y)),
        "precision": precision,
        "sensitivity": sensitivity,
        "specificity": _ratio(tn, tn + fp),
        "f1": _ratio(2 * precision * sensitivity, precision + sensitivity),
        "roc_auc": float(roc_auc_score(y, p)) if both_classes else float("nan"),
        "pr_auc": float(average_precision_score(y, p)) if both_classes else float("nan"),
        "brier": float(brier_score_loss(y, p)),
        "ece": expected_calibration_error(y, p),
    }


def bootstrap_intervals(
    y: np.ndarray, p: np.ndarray, threshold: float, *, samples: int = 1000, seed: int = 0
) -> dict[str, Estimate]:
    """Point estimates with 95% percentile intervals from a stratified bootstrap over images."""
    y = np.asarray(y, dtype=int)
    p = np.asarray(p, dtype=float)
    point = binary_metrics(y, p, threshold)
    if samples <= 0:
        return {k: Estimate(value=v) for k, v in point.items()}
    rng = np.random.default_rng(seed)
    positives, negatives = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    draws: dict[str, list[float]] = {k: [] for k in point}
    for _ in range(samples):
        index = np.concatenate([rng.choice(positives, len(positives)), rng.choice(negatives, len(negatives))])
        for key, value in binary_metrics(y[index], p[index], threshold).items():
            draws[key].append(value)
    return {
        key: Estimate(
            value=value,
            ci_low=float(np.nanpercentile(draws[key], 2.5)),
            ci_high=float(np.nanpercentile(draws[key], 97.5)),
        )
        for key, value in point.items()
    }


def split_metrics(
    name: str, y: np.ndarray, p: np.ndarray, threshold: float, *, samples: int, seed: int
) -> SplitMetrics:
    return SplitMetrics(
        split=name,
        n_images=int(len(y)),
        n_positive=int(np.sum(y)),
        threshold=float(threshold),
        metrics=bootstrap_intervals(y, p, threshold, samples=samples, seed=seed),
        confusion_matrix=confusion(y, p, threshold).astype(int).tolist(),
    )


def _point(name: str, threshold: float, y: np.ndarray, p: np.ndarray, description: str) -> OperatingPoint:
    m = binary_metrics(y, p, threshold)
    return OperatingPoint(
        name=name,
        threshold=float(np.clip(threshold, 0.0, 1.0)),
        sensitivity=m["sensitivity"],
        specificity=m["specificity"],
        description=description,
    )


def _youden_threshold(y: np.ndarray, p: np.ndarray) -> float:
    fpr, tpr, thresholds = roc_curve(y, p)
    finite = np.isfinite(thresholds)
    return float(thresholds[finite][np.argmax((tpr - fpr)[finite])])


POINT_DESCRIPTIONS = {
    "youden": "Maximises sensitivity + specificity - 1 on validation.",
    "max_f1": "Maximises F1 of the PNEUMONIA class on validation.",
    "sensitivity_95": "Highest threshold keeping validation sensitivity >= 0.95 (best specificity at that floor).",
    "balanced_0.5": "Probability 0.5 of the calibrated model.",
    "stress_youden": "Maximises sensitivity + specificity - 1 over validation and its "
    "contrast/gamma/blur/noise/crop/shift perturbations.",
}


def operating_point_thresholds(
    y: np.ndarray,
    p: np.ndarray,
    perturbed: dict[str, np.ndarray] | None = None,
    *,
    sample_weight: np.ndarray | None = None,
) -> dict[str, float]:
    """The threshold of each named rule (see `operating_points`), in the units of `p`.

    The rules other than balanced_0.5 only rank the scores, so `p` may be any increasing function of the
    probability (a logit, say); balanced_0.5 is 0.5 on the calibrated probability. `sample_weight` (one weight
    per class, e.g. to a site sample's intended prevalence) changes only max_f1: the other rules depend on each
    class's own rates.
    """
    y = np.asarray(y, dtype=int)
    p = np.asarray(p, dtype=float)
    precision, recall, pr_thresholds = precision_recall_curve(y, p, sample_weight=sample_weight)
    f1 = 2 * precision[:-1] * recall[:-1] / np.maximum(precision[:-1] + recall[:-1], _EPS)
    candidates = np.unique(p)[::-1]  # highest first
    thresholds = {
        "youden": _youden_threshold(y, p),
        "max_f1": float(pr_thresholds[np.argmax(f1)]),
        "sensitivity_95": float(
            next(t for t in candidates if positive_mask(p[y == 1], t).mean() >= TARGET_SENSITIVITY)
        ),
        "balanced_0.5": 0.5,
    }
    if perturbed:
        pooled_y = np.concatenate([y] * (len(perturbed) + 1))
        pooled_p = np.concatenate([p, *perturbed.values()])
        thresholds["stress_youden"] = _youden_threshold(pooled_y, pooled_p)
    return thresholds


def operating_points(
    y: np.ndarray, p: np.ndarray, perturbed: dict[str, np.ndarray] | None = None
) -> list[OperatingPoint]:
    """Named thresholds chosen on (validation) predictions.

    youden          maximises sensitivity + specificity - 1
    max_f1          maximises F1 of the PNEUMONIA class
    sensitivity_95  the highest threshold whose sensitivity is still >= 0.95 (best specificity at that floor)
    balanced_0.5    0.5 on the calibrated probability, for reference
    stress_youden   (with `perturbed`) maximises Youden's J over the clean and all perturbed validation
                    predictions pooled: a threshold that holds up when acquisition changes
    Sensitivity/specificity of every point are reported on the clean validation predictions.
    """
    y = np.asarray(y, dtype=int)
    p = np.asarray(p, dtype=float)
    return [
        _point(name, threshold, y, p, POINT_DESCRIPTIONS[name])
        for name, threshold in operating_point_thresholds(y, p, perturbed).items()
    ]


def logits_from_probabilities(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1 - _EPS)
    return np.log(p / (1 - p))


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(z, dtype=np.float64)))


def fit_platt(
    y: np.ndarray, logits: np.ndarray, *, sample_weight: np.ndarray | None = None, fit_scale: bool = True
) -> tuple[float, float]:
    """(scale > 0, bias) minimising the negative log-likelihood of sigmoid(scale * logit + bias) (Platt, 1999).

    Temperature scaling alone (bias 0) cannot undo the shift that class weighting puts into the logit; the
    bias term can. A positive scale keeps the ranking (ROC-AUC) and the named operating points' decisions.
    `fit_scale=False` fits the bias alone (scale 1); `sample_weight` weights each image's term.
    """
    y = np.asarray(y, dtype=np.float64)
    z = np.asarray(logits, dtype=np.float64)
    w = np.ones_like(y) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    if not fit_scale:  # the bias alone: the weighted log-likelihood's derivative is monotone in it
        from scipy.optimize import brentq

        gradient = lambda b: float(np.sum(w * (sigmoid(z + b) - y)))  # noqa: E731
        low, high = -60.0, 60.0
        if gradient(low) >= 0 or gradient(high) <= 0:  # one class only: the optimum is at infinity
            return 1.0, low if gradient(low) >= 0 else high
        return 1.0, float(brentq(gradient, low, high, xtol=1e-9))

    def nll(params: np.ndarray) -> float:
        scale, bias = np.exp(params[0]), params[1]
        q = np.clip(sigmoid(scale * z + bias), _EPS, 1 - _EPS)
        return float(-np.sum(w * (y * np.log(q) + (1 - y) * np.log(1 - q))) / np.sum(w))

    result = minimize(
        nll, x0=np.zeros(2), method="Nelder-Mead", options={"xatol": 1e-6, "fatol": 1e-9, "maxiter": 2000}
    )
    return float(np.exp(result.x[0])), float(result.x[1])


def calibrate(p: np.ndarray, scale: float, bias: float) -> np.ndarray:
    return sigmoid(scale * logits_from_probabilities(p) + bias)


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion (Wilson 1927): right at small n and at 0 or n successes,
    where the normal approximation collapses to a point. (0, 1) when n is 0."""
    if n <= 0:
        return 0.0, 1.0
    phat = successes / n
    denominator = 1 + z**2 / n
    centre = (phat + z**2 / (2 * n)) / denominator
    half = z * np.sqrt(phat * (1 - phat) / n + z**2 / (4 * n**2)) / denominator
    low = 0.0 if successes <= 0 else max(0.0, centre - half)  # exact ends: no 0.9999999999999999 at n of n
    high = 1.0 if successes >= n else min(1.0, centre + half)
    return float(low), float(high)
