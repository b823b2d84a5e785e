"""Re-fit a bundle's calibration and re-choose its operating points on a site's labelled sample (`calibrate`).

Everything here works on the source bundle's served logit z = log(p / (1 - p)), p the ONNX output clipped to
[1e-7, 1 - 1e-7], in float64: off-site the useful thresholds sit at probabilities above 0.98, where steps in p
are too coarse. The operating points keep their names and rules: `sensitivity_95` is still the highest
threshold that keeps sensitivity >= 0.95, now on the site.

The default method, `shrunk`, was chosen on simulated sites (results/site_calibration, README there):
1. calibration: Platt scaling on the sample, weighted so that the classes count in the validation split's
   proportion (the probability keeps the meaning it had: calibrated to the validation prevalence); the bias
   alone (scale 1) by default, which predicted the site's other images better than a full fit at every n
   measured (`calibration="full"` fits both);
2. the shift: a bias-only fit b0 says how far the site moved the logit; under a pure shift, validation's
   threshold v sits at v - b0 on the site ("validation, shifted");
3. each rule on the sample alone ("site"): the same code that chose the points on validation
   (training.metrics.operating_points), except that `sensitivity_95` takes the Harrell-Davis estimate of the
   5th percentile of the PNEUMONIA logits rather than the 4th-lowest of 60: the bare order statistic is
   biased low (0.93 mean sensitivity on new images) and jumps from image to image;
4. shrinkage: threshold = w * site + (1 - w) * (validation, shifted), w = n / (n + SHRINK_N), n the images the
   rule leans on (the PNEUMONIA images for sensitivity_95, the smaller class otherwise). Few labels lean on
   validation's shape; many follow the site.
`balanced_0.5` stays 0.5 on the new calibrated probability. `stress_youden` pools the sample with its stress
perturbations (scored the same way) when they are given, as validation did; without them it is shifted only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from scipy.stats import beta as beta_distribution

from pneumonia.bundle import BundleMetadata
from pneumonia.labels import positive_mask
from training.metrics import (
    TARGET_SENSITIVITY,
    fit_platt,
    logits_from_probabilities,
    operating_point_thresholds,
    sigmoid,
)
from training.site_options import CALIBRATIONS, DEFAULT_CALIBRATION, DEFAULT_METHOD, METHODS, SHRINK_N

BALANCED = "balanced_0.5"
STRESS = "stress_youden"
SENSITIVITY_95 = "sensitivity_95"
RULES_ON_SAMPLE = ("youden", "max_f1", SENSITIVITY_95, STRESS)  # what training.metrics.operating_points knows


@dataclass(frozen=True)
class SourcePoints:
    """What the source bundle says: each point's threshold as a logit, its default, the validation prevalence."""

    logits: dict[str, float]
    default: str
    prevalence: float

    @classmethod
    def from_metadata(cls, metadata: BundleMetadata) -> SourcePoints:
        thresholds = np.array([p.threshold for p in metadata.operating_points])
        logits = logits_from_probabilities(thresholds)
        return cls(
            logits={p.name: float(z) for p, z in zip(metadata.operating_points, logits, strict=True)},
            default=metadata.default_operating_point,
            prevalence=metadata.validation.n_positive / metadata.validation.n_images,
        )


@dataclass(frozen=True)
class SitePoint:
    name: str
    logit: float  # the new threshold, on the source's served logit
    site: float | None  # the rule on the sample alone (None: the rule cannot be applied to the sample)
    shifted: float  # validation's threshold moved by the site's shift
    weight: float  # of `site`


@dataclass(frozen=True)
class Recalibration:
    """The new calibration (new logit = scale * z + bias, z the source's served logit) and thresholds."""

    method: str
    scale: float
    bias: float
    shift: float  # the bias-only fit: how far the site moved the logit (validation's threshold v sits at v - shift)
    prevalence: float
    points: dict[str, SitePoint] = field(default_factory=dict)

    def probability(self, z: np.ndarray) -> np.ndarray:
        """The new served probability of images whose source logit is `z`."""
        return sigmoid(self.scale * np.asarray(z, dtype=np.float64) + self.bias)

    def threshold(self, name: str) -> float:
        """The point's threshold on the new calibrated probability."""
        return float(self.probability(np.array([self.points[name].logit]))[0])


def prevalence_weights(y: np.ndarray, prevalence: float) -> np.ndarray:
    """Per-image weights under which the sample's classes count in proportion `prevalence` : 1 - prevalence."""
    y = np.asarray(y, dtype=int)
    share = y.mean()
    return np.where(y == 1, prevalence / share, (1 - prevalence) / (1 - share))


def harrell_davis(x: np.ndarray, q: float) -> float:
    """The Harrell-Davis estimate of the q-quantile: a Beta-weighted mean of all order statistics (Harrell and
    Davis 1982), smoother than the single order statistic at the same quantile."""
    x = np.sort(np.asarray(x, dtype=np.float64))
    n = len(x)
    a, b = (n + 1) * q, (n + 1) * (1 - q)
    weights = np.diff(beta_distribution.cdf(np.arange(n + 1) / n, a, b))
    return float(weights @ x)


@dataclass(frozen=True)
class SiteEvidence:
    """What a labelled sample says, before any method combines it: the site's logit shift (the bias-only Platt
    fit at the validation prevalence), every rule applied to the sample, and the smoothed sensitivity_95."""

    z: np.ndarray
    y: np.ndarray
    prevalence: float
    shift: float
    rules: dict[str, float]  # rule -> threshold logit on the sample (training.metrics' rules)
    smoothed_sensitivity_95: float  # Harrell-Davis 5th percentile of the PNEUMONIA logits

    @property
    def n_pneumonia(self) -> int:
        return int(self.y.sum())

    @property
    def n_normal(self) -> int:
        return int((1 - self.y).sum())


def site_evidence(
    z: np.ndarray, y: np.ndarray, prevalence: float, perturbed: Mapping[str, np.ndarray] | None = None
) -> SiteEvidence:
    z, y = np.asarray(z, dtype=np.float64), np.asarray(y, dtype=int)
    if min(int(y.sum()), int((1 - y).sum())) < 1:
        raise ValueError("the sample needs both classes")
    weights = prevalence_weights(y, prevalence)
    _, shift = fit_platt(y, z, sample_weight=weights, fit_scale=False)
    found = operating_point_thresholds(y, z, dict(perturbed) if perturbed else None, sample_weight=weights)
    rules = {name: _below(z, float(t)) for name, t in found.items() if name in RULES_ON_SAMPLE}
    smoothed = harrell_davis(z[y == 1], 1 - TARGET_SENSITIVITY)
    return SiteEvidence(z, y, prevalence, float(shift), rules, smoothed)


def _below(z: np.ndarray, threshold: float) -> float:
    """A rule's threshold is a sample image's own score; served through the re-exported model, that image's
    probability can round to either side of it. Halfway to the next lower score keeps every decision on the
    sample and leaves a margin (when the threshold is the lowest score, the same half gap below it)."""
    lower = np.unique(z[z < threshold])
    if len(lower) == 0:
        higher = np.unique(z[z > threshold])
        return threshold - (float(higher[0] - threshold) / 2 if len(higher) else 1e-6)
    return (threshold + float(lower[-1])) / 2


def recalibrate(
    z: np.ndarray,
    y: np.ndarray,
    source: SourcePoints,
    method: str = DEFAULT_METHOD,
    perturbed: Mapping[str, np.ndarray] | None = None,
    *,
    shrink_n: float = SHRINK_N,
    calibration: str = DEFAULT_CALIBRATION,
) -> Recalibration:
    """The site's calibration and every source point re-chosen on the sample (`z` source logits, `y` 0/1)."""
    _check(method, calibration)
    return combine(site_evidence(z, y, source.prevalence, perturbed), source, method, shrink_n=shrink_n,
                   calibration=calibration)  # fmt: skip


def _check(method: str, calibration: str) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    if calibration not in CALIBRATIONS:
        raise ValueError(f"unknown calibration {calibration!r}; choose from {', '.join(CALIBRATIONS)}")


def combine(
    evidence: SiteEvidence,
    source: SourcePoints,
    method: str = DEFAULT_METHOD,
    *,
    shrink_n: float = SHRINK_N,
    calibration: str = DEFAULT_CALIBRATION,
) -> Recalibration:
    """One method's calibration and thresholds from a sample's evidence (see the module's docstring)."""
    _check(method, calibration)
    shift = evidence.shift
    if calibration == "full":
        scale, bias = fit_platt(
            evidence.y, evidence.z, sample_weight=prevalence_weights(evidence.y, evidence.prevalence)
        )
    else:
        scale, bias = 1.0, shift
    rules = dict(evidence.rules)
    if method in ("shrunk", "smoothed"):
        rules[SENSITIVITY_95] = evidence.smoothed_sensitivity_95
    points = {}
    for name, validation_logit in source.logits.items():
        shifted = validation_logit - shift
        if name == BALANCED:
            # 0.5 on the new calibrated probability: the rule is the calibration itself
            points[name] = SitePoint(name, -bias / scale, None, shifted, 1.0)
            continue
        site = rules.get(name)
        if site is None or method == "shift":
            weight = 0.0
        elif method == "shrunk":
            n = evidence.n_pneumonia if name == SENSITIVITY_95 else min(evidence.n_pneumonia, evidence.n_normal)
            weight = n / (n + shrink_n)
        else:
            weight = 1.0
        logit = shifted if site is None else weight * site + (1 - weight) * shifted
        points[name] = SitePoint(name, float(logit), site, float(shifted), float(weight))
    return Recalibration(method, float(scale), float(bias), float(shift), source.prevalence, points)


@dataclass(frozen=True)
class Counts:
    """Decisions at one point: true/false positives and negatives."""

    tp: int
    fn: int
    tn: int
    fp: int


def counts(positive: np.ndarray, y: np.ndarray) -> Counts:
    """Counts of the decisions `positive` (the label rule's mask) against the labels `y`."""
    positive = np.asarray(positive, dtype=bool)
    y = np.asarray(y, dtype=bool)
    return Counts(
        tp=int((positive & y).sum()), fn=int((~positive & y).sum()),
        tn=int((~positive & ~y).sum()), fp=int((positive & ~y).sum()),
    )  # fmt: skip


def cross_validate(
    z: np.ndarray,
    y: np.ndarray,
    source: SourcePoints,
    method: str = DEFAULT_METHOD,
    perturbed: Mapping[str, np.ndarray] | None = None,
    *,
    folds: int = 5,
    seed: int = 0,
) -> dict[str, Counts]:
    """Out-of-sample decisions of the whole procedure: stratified k-fold, each fold labelled at the points
    re-chosen on the other folds, counts pooled. What the in-sample metrics of a re-chosen point overstate."""
    z, y = np.asarray(z, dtype=np.float64), np.asarray(y, dtype=int)
    rng = np.random.default_rng(seed)
    fold = np.empty(len(y), dtype=int)
    for label in (0, 1):
        index = rng.permutation(np.flatnonzero(y == label))
        fold[index] = np.arange(len(index)) % folds
    decided: dict[str, list[Counts]] = {}
    for k in range(folds):
        train, test = fold != k, fold == k
        if min(y[train].sum(), (1 - y[train]).sum()) < 1:
            continue
        fitted = recalibrate(
            z[train], y[train], source, method, {n: v[train] for n, v in perturbed.items()} if perturbed else None
        )
        for name, point in fitted.points.items():
            # the label rule (pneumonia.labels) on the logit, which orders images as the probability does
            decided.setdefault(name, []).append(counts(positive_mask(z[test], point.logit), y[test]))
    return {
        name: Counts(*(sum(getattr(c, f) for c in parts) for f in ("tp", "fn", "tn", "fp")))
        for name, parts in decided.items()
    }
