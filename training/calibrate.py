"""`python -m training calibrate`: re-fit the calibration and re-choose every operating point on a site's
labelled sample, into a new bundle.

Every image is scored through the served path (pneumonia.Model: decode, input check under `refuse`, ONNX);
refused images are listed with their reasons and left out. Below `--min-per-class` usable images of either class
nothing is written. The statistics (training/recalibrate.py) work on the source's logits; the chosen calibration
is folded into the logit layer of model.keras, model.onnx is converted again and parity-checked, and the new
probabilities are checked against the fitted calibration, in a staged bundle moved into place only when all of
it succeeded (training/derive.py, as `adapt` does). The source bundle is never touched.

The new bundle's operating points keep their names and rules, with thresholds from the site's sample;
`metadata.site_calibration` records the sample (n per class, a digest over the images, the date), the method
and the metrics before and after, with intervals. The same site report as `site-report` is written for the
source bundle (before) and the new one (after) on the sample, next to the bundle (it shows the site's images,
so it is kept out of the bundle).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pneumonia.bundle import (
    PARITY_TOLERANCE,
    SCHEMA_VERSION,
    BundleMetadata,
    Estimate,
    OperatingPoint,
    SiteCalibration,
    utc_now,
)
from pneumonia.labels import positive_mask
from pneumonia.model import Model
from training.adapt import images_digest
from training.derive import DerivedModels, derive_bundle, read_source
from training.errors import TrainingError
from training.recalibrate import (
    DEFAULT_CALIBRATION,
    DEFAULT_METHOD,
    STRESS,
    Recalibration,
    SourcePoints,
    counts,
    cross_validate,
    recalibrate,
)
from training.site_data import ScoredSite, labelled_files, perturbed_logits, score_site
from training.site_options import DEFAULT_MIN_PER_CLASS, describe
from training.site_report import BOOTSTRAP, GALLERY, WIDE, build_report, point_metrics, wide, write_report

log = logging.getLogger(__name__)

CV_FOLDS = 5
SIGMOID_TAIL = 1e-4  # below it (or above 1 - it) a served probability does not pin its logit down
RULES = {
    "youden": "Maximises sensitivity + specificity - 1",
    "max_f1": "Maximises F1 of the PNEUMONIA class (classes weighted to the validation prevalence)",
    "sensitivity_95": "Highest threshold keeping sensitivity >= 0.95 (best specificity at that floor)",
    "balanced_0.5": "Probability 0.5 of the site-calibrated model",
    "stress_youden": "Maximises sensitivity + specificity - 1 over the sample and its "
    "contrast/gamma/blur/noise/crop/shift perturbations",
}


class CalibrateError(TrainingError):
    """Calibration refused: too few usable labelled images, bad labels, or an invalid source bundle."""


@dataclass(frozen=True)
class Calibrated:
    bundle: Path
    report: Path
    fit: Recalibration
    record: SiteCalibration


def default_report_dir(out_dir: Path) -> Path:
    return Path(out_dir).with_name(Path(out_dir).name + "-site-report")


def bake(model, logit_layer: str, scale: float, bias: float) -> None:
    """new logit = scale * logit + bias, folded into the Dense layer that outputs the logit (as export bakes the
    validation calibration)."""
    layer = model.get_layer(logit_layer)
    kernel, layer_bias = layer.get_weights()
    layer.set_weights([kernel * scale, layer_bias * scale + bias])


def _metrics(site: ScoredSite, logits: dict[str, float]) -> dict[str, dict[str, Estimate]]:
    return {
        name: point_metrics(counts(positive_mask(site.logits, logit), site.labels)) for name, logit in logits.items()
    }


def _operating_points(
    metadata: BundleMetadata, site: ScoredSite, fit: Recalibration, after: dict[str, dict[str, Estimate]]
) -> list[OperatingPoint]:
    n = f"{site.count(1)} PNEUMONIA / {site.count(0)} NORMAL"
    points = []
    for source in metadata.operating_points:
        point = fit.points[source.name]
        rule = RULES.get(source.name, f"{source.name} (validation's rule)")
        how = (
            "the calibration itself"
            if point.site is None and source.name == "balanced_0.5"
            else f"validation's threshold moved by the site's shift ({source.name} cannot be re-applied here)"
            if point.site is None
            else f"site estimate weighted {point.weight:.2f}, validation's threshold moved by the site's shift "
            f"{1 - point.weight:.2f}"
        )
        points.append(
            OperatingPoint(
                name=source.name,
                threshold=float(np.clip(fit.threshold(source.name), 0.0, 1.0)),
                sensitivity=after[source.name]["sensitivity"].value,
                specificity=after[source.name]["specificity"].value,
                description=f"{rule}, on the site's labelled sample ({n}; {how}). Sensitivity/specificity "
                "measured on that sample.",
            )
        )
    return points


def calibrate_bundle(
    bundle_dir: Path,
    images: Path,
    out_dir: Path,
    *,
    labels: Path | None = None,
    min_per_class: int = DEFAULT_MIN_PER_CLASS,
    method: str = DEFAULT_METHOD,
    calibration: str = DEFAULT_CALIBRATION,
    report_dir: Path | None = None,
    gallery: int = GALLERY,
    bootstrap: int = BOOTSTRAP,
    parity_tolerance: float = PARITY_TOLERANCE,
) -> Calibrated:
    bundle_dir, out_dir = Path(bundle_dir), Path(out_dir)
    report_dir = Path(report_dir) if report_dir else default_report_dir(out_dir)
    source = read_source(bundle_dir, out_dir, CalibrateError)
    metadata = source.metadata
    files = labelled_files(images, labels)
    model = Model.load(bundle_dir, explain=False)  # scoring needs no TensorFlow; the gallery below does
    site = score_site(model, files)
    usable = {"NORMAL": site.count(0), "PNEUMONIA": site.count(1)}
    if min(usable.values()) < min_per_class:
        reasons = "; ".join(f"{r.name}: {r.code}" for r in site.refused[:5])
        more = f" (+{len(site.refused) - 5} more)" if len(site.refused) > 5 else ""
        raise CalibrateError(
            f"{images}: {usable['NORMAL']} NORMAL and {usable['PNEUMONIA']} PNEUMONIA usable images, fewer than "
            f"--min-per-class {min_per_class} of each ({len(site.refused)} left out"
            + (f": {reasons}{more}" if reasons else "")
            + "); nothing was written"
        )
    perturbed = perturbed_logits(model, site) if STRESS in {p.name for p in metadata.operating_points} else None
    points = SourcePoints.from_metadata(metadata)
    fit = recalibrate(site.logits, site.labels, points, method, perturbed, calibration=calibration)
    before = _metrics(site, points.logits)
    after = _metrics(site, {name: point.logit for name, point in fit.points.items()})
    folds = cross_validate(site.logits, site.labels, points, method, perturbed, folds=CV_FOLDS)
    cross_validated = {name: point_metrics(c) for name, c in folds.items()}
    if gallery > 0:
        model = Model.load(bundle_dir)
    before_report = build_report(model, site, title=f"Site report before calibration: {metadata.name} "
                                 f"{metadata.version}", gallery=gallery, bootstrap=bootstrap)  # fmt: skip
    auc = Estimate.model_validate(before_report.data["roc_auc"])
    warnings = [
        f"{name}: {metric} {e.value:.3f} [{e.ci_low:.3f}, {e.ci_high:.3f}] ({kind}) is wider than ±{WIDE:.2f}"
        for kind, table in (("after, in-sample", after), ("cross-validated", cross_validated))
        for name, metrics in table.items()
        for metric in ("sensitivity", "specificity")
        if wide(e := metrics[metric])
    ]
    if wide(auc):
        warnings.append(f"ROC-AUC {auc.value:.3f} [{auc.ci_low:.3f}, {auc.ci_high:.3f}] is wider than ±{WIDE:.2f}")
    for warning in warnings:
        log.warning("%s: label more images to narrow it", warning)
    record = SiteCalibration(
        method=f"{method}: {describe(method)}",
        calibration=calibration,
        source_bundle=f"{metadata.name} {metadata.version}",
        source_version=metadata.version,
        n_normal=site.count(0),
        n_pneumonia=site.count(1),
        images_sha256=images_digest(site.hashes),
        calibrated_at=utc_now(),
        refused=len(site.refused),
        scale=fit.scale,
        bias=fit.bias,
        prevalence=fit.prevalence,
        roc_auc=auc,
        before=before,
        after=after,
        cross_validated=cross_validated,
        warnings=warnings,
        note=(
            f"Logit shift of the site {-fit.shift:+.3f} (bias-only Platt fit, classes weighted to the validation "
            f"prevalence {fit.prevalence:.3f}). `after` is measured on the images the thresholds were chosen on "
            f"(optimistic); `cross_validated` re-runs the whole procedure on {CV_FOLDS - 1} of {CV_FOLDS} folds and "
            "judges the fifth. The validation metrics describe the source model at its validation threshold."
        ),
    )
    new_points = _operating_points(metadata, site, fit, after)
    parity_inputs = site.model_inputs(slice(0, 64))
    # onnxruntime's float32 sigmoid is accurate to about 1e-7 absolute, so a logit recovered from a probability
    # in the tails is off by up to ~0.1; moved to the middle by the new bias it would fail a correct bake
    measurable = np.flatnonzero((site.probabilities > SIGMOID_TAIL) & (site.probabilities < 1 - SIGMOID_TAIL))[:64]
    calibration_inputs = site.model_inputs(measurable)
    expected = fit.probability(site.logits[measurable])

    def change(keras_model) -> None:
        bake(keras_model, metadata.logit_layer, fit.scale, fit.bias)

    def calibrated(derived: DerivedModels, keras_model) -> BundleMetadata:
        _check_served_calibration(derived.staging, calibration_inputs, expected, parity_tolerance)
        return metadata.model_copy(
            update={
                **derived.update,
                "schema_version": SCHEMA_VERSION,
                "name": f"{metadata.name}-site",
                "version": f"{metadata.version}+sitecal.{utc_now():%Y%m%d%H%M%S}",
                "operating_points": new_points,
                "site_calibration": record,
            }
        )

    derive_bundle(source, out_dir, change, parity_inputs, calibrated, parity_tolerance)
    # the after report: the new bundle loaded as the service loads it, the same images scored through it
    new_model = Model.load(out_dir, explain=gallery > 0)
    after_site = score_site(new_model, files)
    after_report = build_report(new_model, after_site, title=f"Site report after calibration: "
                                f"{new_model.metadata.name} {new_model.metadata.version}", gallery=gallery,
                                bootstrap=bootstrap, in_sample=True)  # fmt: skip
    write_report(before_report, report_dir / "before")
    write_report(after_report, report_dir / "after")
    return Calibrated(out_dir, report_dir, fit, record)


def _check_served_calibration(staging: Path, inputs: np.ndarray, expected: np.ndarray, tolerance: float) -> None:
    """The staged model.onnx must serve sigmoid(scale * z + bias) of the source's logits z (on the images whose
    source probability is outside the sigmoid's tails; with none, derive_bundle's Keras/ONNX parity stands)."""
    if not len(expected):
        return
    import onnxruntime as ort

    from pneumonia.bundle import ONNX_FILENAME

    session = ort.InferenceSession(str(staging / ONNX_FILENAME), providers=["CPUExecutionProvider"])
    served = np.asarray(session.run(None, {session.get_inputs()[0].name: inputs})[0], dtype=np.float64).reshape(-1)
    difference = float(np.max(np.abs(served - expected)))
    if not difference <= tolerance:
        raise CalibrateError(
            f"the re-exported model.onnx does not serve the fitted calibration (largest |dp| {difference:.2e} > "
            f"{tolerance:g}); nothing was written"
        )
