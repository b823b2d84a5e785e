"""The site verbs' choices and defaults (`site-report`, `calibrate`), in a module that imports nothing.

`pneumonia calibrate --help` builds its parser from these, so the help works where the training extras (scipy,
scikit-learn) are not installed; the verbs themselves import training.site_report and training.calibrate, which
need them, only when they run. training.recalibrate, training.site_report and training.calibrate re-export them.
"""

from __future__ import annotations

GALLERY = 8  # false positives and false negatives shown, each
BOOTSTRAP = 1000  # bootstrap samples of the ROC-AUC
DEFAULT_MIN_PER_CLASS = 20  # `calibrate` refuses with fewer usable images of either class

METHODS = ("shrunk", "smoothed", "empirical", "shift")
DEFAULT_METHOD = "shrunk"
METHOD_DESCRIPTIONS = {
    "shrunk": "each operating point's rule on the site sample (sensitivity_95: Harrell-Davis 5th percentile of the "
    "PNEUMONIA logits), shrunk towards validation's threshold moved by the site's logit shift, weight n/(n+{k})",
    "smoothed": "each operating point's rule on the site sample (sensitivity_95: Harrell-Davis 5th percentile of "
    "the PNEUMONIA logits), no shrinkage",
    "empirical": "each operating point's rule on the site sample, as on validation (bare re-pick)",
    "shift": "validation's thresholds moved by the site's logit shift (bias-only Platt), no rule re-applied",
}
# Chosen on the simulated sites (results/site_calibration): the prior strength of the shrinkage, in images.
SHRINK_N = 20
# The calibration: `bias` (scale 1) is the default; on the simulated sites a full (scale and bias) fit had the
# higher log loss on the site's other images at every sample size measured (10-100 per class).
CALIBRATIONS = ("bias", "full")
DEFAULT_CALIBRATION = "bias"


def describe(method: str, shrink_n: float = SHRINK_N) -> str:
    """One line on what a threshold method does (the `calibrate --help` epilog and the bundle's record)."""
    return METHOD_DESCRIPTIONS[method].format(k=shrink_n)
