"""The bundle's Markdown model card (MODEL_CARD.md), generated from its metadata alone so the two cannot disagree.

One section per part of the metadata: validation metrics, operating points (and where they were chosen), stress,
explanations, input check, population, site adaptation and site calibration. models/default/MODEL_CARD.md is this
function's output for models/default/metadata.json (tests/test_shipped_bundle.py), and the docs include that file.
"""

from __future__ import annotations

from pneumonia.bundle import BundleMetadata
from pneumonia.explain import DEFAULT_METHOD
from pneumonia.population import population_words


def _estimate(metrics: dict, key: str) -> str:
    e = metrics[key]
    return f"{e.value:.3f}" if e.ci_low is None else f"{e.value:.3f} (95% CI {e.ci_low:.3f}-{e.ci_high:.3f})"


def population_section(metadata: BundleMetadata) -> str:
    """Whose films the model knows, and what the service does with the others (schema 3)."""
    population, check, quality = metadata.population, metadata.population_check, metadata.image_quality
    if population is None:
        return (
            "This bundle does not declare its population (schema < 3): only DICOM tags are checked. The shipped "
            "model's training films are of children aged 1-5 at one hospital; its answers on adult films mean nothing."
        )
    lines = [
        f"Trained on {population_words(population)}: {population.modality}, views {'/'.join(population.views)}; "
        f"source: {population.source}. The model does not cover adults, and unseen pediatric sites are untested.",
        "A DICOM film whose PatientAge (or birth and study dates) lies outside that range is refused as "
        "`outside_population`; a lateral view, another body part or another modality as `not_a_chest_xray`.",
    ]
    if check is not None:
        held_out = "; ".join(f"{name}: {share:.1%} flagged" for name, share in check.held_out.items())
        lines.append(
            f"A learned check flags films outside the population for every format. Method: {check.method}. Fitted "
            f"on {check.fitted_on}; threshold {check.threshold:.3f} chosen on {check.threshold_chosen_on}, accepting "
            f"{check.validation_acceptance:.1%} of them. On an adult collection it was not fitted on: {held_out}."
        )
    if quality is not None:
        verb = {"refuse": "refused", "warn": "answered with a warning"}
        if quality.exposure_action is None:  # one action for both rules (bundles before they were chosen apart)
            lines.append(
                f"Image quality: films with a 5th-95th percentile spread below {quality.min_dynamic_range:.0f} gray "
                f"levels or a mean outside {quality.min_mean:.0f}-{quality.max_mean:.0f} ({quality.measured_on}) are "
                f"{verb[quality.action]} ({quality.evidence})."
            )
        else:
            lines.append(
                f"Image quality ({quality.measured_on}): films with a 5th-95th percentile spread below "
                f"{quality.min_dynamic_range:.0f} gray levels are {verb[quality.action]} ({quality.evidence}); films "
                f"with a mean gray level outside {quality.min_mean:.0f}-{quality.max_mean:.0f} are "
                f"{verb[quality.exposure_action]} ({quality.exposure_evidence})."
            )
    return "\n\n".join(lines)


def explanations_section(metadata: BundleMetadata) -> str:
    """Which explanation is served, and what the bundle's model.onnx contributes to it."""
    served = (
        f"Served by default (`/explain`, `Model.explain`): `{DEFAULT_METHOD}`, each map for the predicted class. "
        "The default was chosen by the faithfulness benchmark (`pneumonia bench explain`; the shipped model's "
        "evidence is in results/explanations)."
    )
    activation = metadata.explain_activation
    if activation is None:
        return f"{served} This bundle's model.onnx outputs no activation, so model.keras runs the whole model."
    return (
        f"{served} model.onnx also outputs the activation of `{activation.layer}` (`{activation.output}`), the "
        "earliest layer any served method reads, so model.keras runs only the layers after it."
    )


def model_card(metadata: BundleMetadata) -> str:
    """A Markdown model card generated from the metadata alone, so the two cannot disagree."""
    v = metadata.validation
    metric_rows = "\n".join(
        f"| {key} | {_estimate(v.metrics, key)} |"
        for key in ("roc_auc", "pr_auc", "sensitivity", "specificity", "accuracy", "precision", "f1", "brier", "ece")
    )
    point_rows = "\n".join(
        f"| {p.name}{' (default)' if p.name == metadata.default_operating_point else ''} | {p.threshold:.4f} | "
        f"{p.sensitivity:.3f} | {p.specificity:.3f} | {p.description} |"
        for p in metadata.operating_points
    )
    stress_rows = "\n".join(
        f"| {name} | {s['roc_auc']:.3f} | {s['sensitivity']:.3f} | {s['specificity']:.3f} |"
        for name, s in metadata.stress.items()
    )
    (tn, fp), (fn, tp) = v.confusion_matrix
    counts = "; ".join(
        f"{split}: {c.get('NORMAL', 0)} NORMAL / {c.get('PNEUMONIA', 0)} PNEUMONIA"
        for split, c in metadata.data.counts.items()
        if sum(c.values())
    )
    limitations_md = "\n".join(f"- {item}" for item in metadata.limitations)
    adaptation = metadata.adaptation
    adaptation_md = (
        f"""
## Site adaptation
Adapted from {adaptation.source_bundle} on {adaptation.n_images} unlabeled images ({adaptation.skipped} skipped),
{adaptation.adapted_at.isoformat()}; images SHA-256 `{adaptation.images_sha256}`. Method: {adaptation.method}.
{adaptation.note} The operating points and their sensitivity/specificity were chosen on the unadapted
validation split; they were not re-measured on the adapted site.
"""
        if adaptation
        else ""
    )
    check = metadata.input_check
    input_check_md = (
        f"Images that are not frontal chest X-rays are refused by default (HTTP 422 `not_a_chest_xray`). "
        f"Method: {check.method}. Fitted on {check.fitted_on}; threshold {check.threshold:.3f} chosen on "
        f"{check.threshold_chosen_on}, accepting {check.validation_acceptance:.1%} of them. "
        "It does not catch every lateral film or other radiograph; see results/ood for what it catches, and "
        "the Population section for adult films."
        if check
        else "This bundle has no fitted input check (schema 1): the service reports the detector as unavailable."
    )
    population_md = population_section(metadata)
    data = metadata.data
    content = f" Content SHA-256 of its {data.files} images: `{data.content_sha256}`." if data.content_sha256 else ""
    return f"""# Model card: {metadata.name}

> **{metadata.disclaimer}**

| | |
|---|---|
| Backbone | {metadata.backbone} (keras.applications), input {metadata.preprocessing.input_height}x{metadata.preprocessing.input_width} RGB 0-255, preprocessing inside the model |
| Version | {metadata.version} (package {metadata.package_version}), created {metadata.created_at.isoformat()} |
| Training | {", ".join(f"{k}: {val}" for k, val in metadata.training.items())} |
| Calibration | {metadata.calibration.method}: p = sigmoid({metadata.calibration.scale:.3f} x logit {metadata.calibration.bias:+.3f}), fitted on validation and baked into the logit layer. Calibrated to the validation prevalence ({metadata.validation.n_positive / metadata.validation.n_images:.0%} pneumonia): where pneumonia is rarer, probabilities overstate it. |
| Files | model.onnx sha256 `{metadata.checksums.onnx_sha256}`; model.keras sha256 `{metadata.checksums.keras_sha256}` |

## Intended use
{metadata.intended_use}

## Data
{metadata.data.dataset}. Source: {metadata.data.source}. Licence: {metadata.data.licence}.
Split: {metadata.data.split_method}. Images: {counts}.{content}

## Validation metrics (default operating point `{metadata.default_operating_point}`, threshold {v.threshold:.4f})
Measured on {v.n_images} validation images ({v.n_positive} PNEUMONIA), 95% stratified bootstrap intervals.

| Metric | Value |
|---|---|
{metric_rows}

Confusion matrix: TN {tn}, FP {fp}, FN {fn}, TP {tp}.

## Operating points ({points_origin(metadata)})
| Name | Threshold | {"Site" if metadata.site_calibration else "Val"} sensitivity | {"Site" if metadata.site_calibration else "Val"} specificity | Rule |
|---|---|---|---|---|
{point_rows}

## Stress check (validation images perturbed; threshold of the default point)
| Perturbation | ROC-AUC | Sensitivity | Specificity |
|---|---|---|---|
{stress_rows}

## Explanations
{explanations_section(metadata)}

## Input check
{input_check_md}

## Population
{population_md}
{adaptation_md}{site_calibration_section(metadata)}
## Limitations
{limitations_md}
"""


def points_origin(metadata: BundleMetadata) -> str:
    if metadata.site_calibration is None:
        return "all chosen on validation"
    record = metadata.site_calibration
    return (
        f"thresholds chosen on a site's labelled sample, {record.n_pneumonia} PNEUMONIA / {record.n_normal} NORMAL; "
        "sensitivity/specificity measured on that sample"
    )


def site_calibration_section(metadata: BundleMetadata) -> str:
    """What `calibrate` changed, in words and numbers (empty for a bundle that was not site-calibrated)."""
    record = metadata.site_calibration
    if record is None:
        return ""

    def metric(table: dict, point: str, key: str) -> str:
        e = table.get(point, {}).get(key)
        return "n/a" if e is None else f"{e.value:.3f} [{e.ci_low:.3f}, {e.ci_high:.3f}]"

    rows = "\n".join(
        f"| {p.name} | {metric(record.before, p.name, 'sensitivity')} / {metric(record.before, p.name, 'specificity')} "
        f"| {metric(record.after, p.name, 'sensitivity')} / {metric(record.after, p.name, 'specificity')} "
        f"| {metric(record.cross_validated, p.name, 'sensitivity')} / "
        f"{metric(record.cross_validated, p.name, 'specificity')} |"
        for p in metadata.operating_points
    )
    warnings = "".join(f"\n- Warning: {w}" for w in record.warnings)
    return f"""
## Site calibration
**The operating points' thresholds now come from the site's labelled sample**, not from validation: calibrated from
{record.source_bundle} on {record.n_normal} NORMAL and {record.n_pneumonia} PNEUMONIA images ({record.refused} left
out), {record.calibrated_at.isoformat()}; images SHA-256 `{record.images_sha256}`. Method: {record.method}.
Calibration ({record.calibration}): p = sigmoid({record.scale:.3f} x z {record.bias:+.3f}), z the source's served logit,
folded into the logit layer on top of the validation calibration above; calibrated to a prevalence of
{record.prevalence:.3f}. ROC-AUC on the sample {record.roc_auc.value:.3f} [{record.roc_auc.ci_low:.3f},
{record.roc_auc.ci_high:.3f}]. {record.note}

| Operating point | Before: sens / spec (source thresholds) | After, in-sample: sens / spec | After, cross-validated: sens / spec |
|---|---|---|---|
{rows}

95% Wilson intervals, on the site's sample.{warnings}
"""
