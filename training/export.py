"""`export`: turn a trained, evaluated model of a run into a model bundle the service can serve.

The bundle is written into a staging directory and moved into place only after the ONNX/Keras parity
check passes, so a failed export never leaves a half-written bundle behind (or destroys the old one).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from pneumonia import __version__
from pneumonia.bundle import (
    EXPLAIN_ACTIVATION_OUTPUT,
    KERAS_FILENAME,
    MODEL_CARD_FILENAME,
    ONNX_FILENAME,
    PARITY_TOLERANCE,
    BundleMetadata,
    DataSummary,
    ExplainActivation,
    FileChecksums,
    InputCheckSpec,
    LogitCalibration,
    OperatingPoint,
    Population,
    Preprocessing,
    SplitMetrics,
    sha256_file,
    utc_now,
    write_metadata,
)
from pneumonia.input_check import INPUT_CHECK_FILENAME, STATISTICS_OUTPUT_PREFIX
from pneumonia.population import population_words
from training import layout, ood, population, provenance
from training.backbones import BACKBONES, LOGIT_LAYER
from training.config import TrainConfig
from training.data import decode_samples
from training.errors import TrainingError
from training.metrics import split_metrics

log = logging.getLogger(__name__)

ONNX_INPUT_NAME = "image"
ONNX_OPSET = 17
PARITY_IMAGES = 64
# Below this validation ROC-AUC a model is near chance: `export` refuses it unless forced.
MIN_VALIDATION_AUC = 0.6

INTENDED_USE = (
    "Research and education: exploring how a convolutional network trained on chest X-rays separates "
    "pneumonia from normal images, and inspecting its Grad-CAM explanations. Not for clinical use."
)


class ExportError(TrainingError):
    pass


@dataclass(frozen=True)
class RunModel:
    """What a run says about one of its trained and evaluated models."""

    backbone: str
    config: TrainConfig
    evaluation: dict[str, Any]
    data_summary: dict[str, Any]

    @property
    def validation_auc(self) -> float:
        return float(self.evaluation["validation"]["metrics"]["roc_auc"]["value"])


@dataclass(frozen=True)
class Conversion:
    """The ONNX graph's tensor names and how closely it agreed with the Keras model."""

    input_name: str
    output_name: str
    parity_max_abs_diff: float
    parity_tolerance: float
    explain_activation: ExplainActivation


def read_run_model(run_dir: Path, backbone: str | None) -> RunModel:
    if not (run_dir / layout.COMPARISON_JSON).is_file():
        raise ExportError(
            f"{run_dir}: no {layout.COMPARISON_JSON}; run `python -m training evaluate --run {run_dir}` first"
        )
    name = backbone or layout.read_comparison(run_dir)["best"]
    model_dir = layout.model_dir(run_dir, name)
    if not (model_dir / layout.EVALUATION_FILE).is_file() or not (model_dir / layout.BEST_CHECKPOINT).is_file():
        raise ExportError(f"{model_dir}: model {name!r} is not trained and evaluated in this run")
    return RunModel(
        name, layout.read_config(run_dir), layout.read_evaluation(model_dir), layout.read_data_summary(run_dir)
    )


def check_quality(run: RunModel, *, force: bool) -> None:
    """Refuse a model near chance on validation unless forced; a forced one is exported with a loud warning."""
    if run.validation_auc >= MIN_VALIDATION_AUC:
        return
    message = (
        f"{run.backbone}: validation ROC-AUC {run.validation_auc:.3f} is below {MIN_VALIDATION_AUC}: "
        "the model is near chance"
    )
    if not force:
        raise ExportError(f"{message}; train it longer or on more data, or pass --force to export it anyway")
    log.warning("WARNING: %s; exporting anyway because of --force", message)


def bake_calibration(model, calibration: LogitCalibration):
    """Fold scale * logit + bias into the logit Dense layer: the model then outputs calibrated probabilities."""
    logit = model.get_layer(LOGIT_LAYER)
    kernel, bias = logit.get_weights()
    logit.set_weights([kernel * calibration.scale, bias * calibration.scale + calibration.bias])
    return model


def served_model(model) -> tuple[Any, ExplainActivation]:
    """What model.onnx computes, all in one run: P(pneumonia) (first output), the input check's statistics
    (stats_i) and the activation explanations start from (explain_activation, see pneumonia.explain)."""
    import keras
    from keras import layers

    from pneumonia.explain import activation_layer

    with_statistics = ood.with_statistics(model, ood.statistic_layers(model))
    root = activation_layer(model)
    activation = layers.Identity(name=EXPLAIN_ACTIVATION_OUTPUT)(model.get_layer(root).output)  # (N, h, w, C)
    served = keras.Model(model.input, [*with_statistics.outputs, activation], name=f"{model.name}_served")
    return served, ExplainActivation(output=EXPLAIN_ACTIVATION_OUTPUT, layer=root)


def convert_to_onnx(model, image_size: int, path: Path) -> tuple[str, str]:
    import tensorflow as tf
    import tf2onnx

    signature = (tf.TensorSpec((None, image_size, image_size, 3), tf.float32, name=ONNX_INPUT_NAME),)
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=signature, opset=ONNX_OPSET)
    path.write_bytes(proto.SerializeToString())
    return proto.graph.input[0].name, proto.graph.output[0].name


def parity_check(onnx_path: Path, keras_model, images: np.ndarray, tolerance: float = PARITY_TOLERANCE) -> float:
    """Largest |P_onnx - P_keras| over real images; raises ExportError above `tolerance`."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    batch = images.astype(np.float32)
    onnx_p = session.run(None, {session.get_inputs()[0].name: batch})[0].reshape(-1)
    keras_p = np.asarray(keras_model(batch, training=False)).reshape(-1)
    difference = float(np.max(np.abs(onnx_p - keras_p)))
    if not difference <= tolerance:
        raise ExportError(
            f"ONNX and Keras disagree by {difference:.2e} (> {tolerance:.0e}) on validation images; "
            "check the conversion, or pass --parity-tolerance to accept a larger difference"
        )
    return difference


def weights_origin(weights: str) -> str:
    """'none', 'imagenet', or the file name of local weights (a training machine's path says nothing)."""
    return weights if weights in ("none", "imagenet") else f"local file {Path(weights).name}"


def limitations(config: TrainConfig, data_summary: dict[str, Any], about: dict[str, str]) -> list[str]:
    train_counts = data_summary["counts"]["train"]
    population = (
        f"Trained on {about['population'].rstrip('.')} (as the dataset card describes it)"
        if about["population"]
        else f"Trained on one dataset ({about['dataset']}) whose population its card does not describe"
    )
    items = [
        f"{population}; not validated on other populations, sites or devices.",
        "Not externally validated. All metrics come from a patient-level validation split of the same dataset, "
        "which flatters: expect lower performance elsewhere.",
        "Operating points were tuned on validation data; the positive fraction of the data "
        f"({train_counts['PNEUMONIA']} of {sum(train_counts.values())} training images) "
        "is far above any screening population, so predictive values do not transfer.",
        "Grad-CAM heatmaps show which regions drove the score; they are coarse and are not lesion localisation.",
        f"Images are reduced to {config.image_size}x{config.image_size} grayscale; fine detail is lost.",
        "Bacterial and viral pneumonia are merged into one class; other findings are out of scope.",
    ]
    if config.weights == "none":
        items.insert(0, "Trained from scratch: no pretrained (ImageNet) weights were used.")
    return items


def validation_at(point: OperatingPoint, run_dir: Path, run: RunModel) -> SplitMetrics:
    """Validation metrics at `point`: the evaluation's own at its default point, else recomputed from predictions."""
    if point.name == run.evaluation["default_operating_point"]:
        return SplitMetrics.model_validate(run.evaluation["validation"])
    arrays = np.load(layout.model_dir(run_dir, run.backbone) / layout.PREDICTIONS_FILE)
    config = run.config
    return split_metrics(
        "validation",
        arrays["val_y"],
        arrays["val_p"],
        point.threshold,
        samples=config.bootstrap_samples,
        seed=config.seed,
    )


def build_metadata(
    run: RunModel,
    *,
    default_point: str,
    validation: SplitMetrics,
    conversion: Conversion,
    checksums: FileChecksums,
    created_at: datetime,
) -> BundleMetadata:
    """The bundle's metadata from the run's records alone (no I/O): config, evaluation, data and provenance."""
    config, evaluation, data_summary = run.config, run.evaluation, run.data_summary
    about = provenance.describe(data_summary.get("provenance", {}), data_summary["data_dir"])
    fitted = evaluation.get("training", {})
    record = data_summary.get("provenance", {})
    return BundleMetadata(
        name=f"{run.backbone}-{config.image_size}",
        version=created_at.strftime("%Y%m%d-%H%M%S"),
        backbone=run.backbone,
        package_version=__version__,
        created_at=created_at,
        preprocessing=Preprocessing(input_height=config.image_size, input_width=config.image_size),
        onnx_input_name=conversion.input_name,
        onnx_output_name=conversion.output_name,
        gradcam_layer=BACKBONES[run.backbone].gradcam_layer,
        logit_layer=LOGIT_LAYER,
        explain_activation=conversion.explain_activation,
        calibration=LogitCalibration.model_validate(evaluation["calibration"]),
        default_operating_point=default_point,
        operating_points=[OperatingPoint.model_validate(p) for p in evaluation["operating_points"]],
        validation=validation,
        stress=evaluation["stress"],
        training={
            **config.model_dump(mode="json"),  # the whole validated recipe
            "weights": weights_origin(config.weights),
            "epochs_run": fitted.get("epochs_run"),
            "best_epoch": fitted.get("best_epoch"),
            "train_seconds": fitted.get("train_seconds"),
            "parity_max_abs_diff": conversion.parity_max_abs_diff,
            "parity_tolerance": conversion.parity_tolerance,
        },
        data=DataSummary(
            dataset=about["dataset"],
            source=about["source"],
            licence=about["licence"],
            split_method=data_summary["split_method"],
            split_seed=data_summary["split_seed"],
            counts=data_summary["counts"],
            card=record.get("card"),
            content_sha256=record.get("content_sha256"),
            files=record.get("files"),
        ),
        intended_use=INTENDED_USE,
        limitations=limitations(config, data_summary, about),
        checksums=checksums,
    )


def export_bundle(
    run_dir: Path,
    out_dir: Path,
    *,
    model_name: str | None = None,
    operating_point: str | None = None,
    parity_tolerance: float = PARITY_TOLERANCE,
    force: bool = False,
    adult_dir: Path | None = None,
) -> Path:
    """Write the bundle of one model of a run: staged, parity-checked, then moved into place. `adult_dir`
    (nih/ and ieee8023/): also fit the population check and the image-quality range (schema 3)."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    run = read_run_model(run_dir, model_name)
    points = {p["name"]: OperatingPoint.model_validate(p) for p in run.evaluation["operating_points"]}
    default_name = operating_point or run.evaluation["default_operating_point"]
    if default_name not in points:
        raise ExportError(f"unknown operating point {default_name!r}; choose from {list(points)}")
    check_quality(run, force=force)
    validation = validation_at(points[default_name], run_dir, run)

    with staged_bundle(out_dir) as staging:
        conversion = _write_models(run_dir, run, staging, parity_tolerance)
        split = layout.read_run_split(run_dir)
        input_check = write_input_check(staging, split["train"], split["val"], run.config.image_size, run.config.seed)
        checksums = FileChecksums(
            onnx_sha256=sha256_file(staging / ONNX_FILENAME), keras_sha256=sha256_file(staging / KERAS_FILENAME)
        )
        metadata = build_metadata(
            run,
            default_point=default_name,
            validation=validation,
            conversion=conversion,
            checksums=checksums,
            created_at=utc_now(),
        )
        metadata = metadata.model_copy(
            update={"input_check": input_check, "population": population.declared_population(metadata.data.dataset)}
        )
        write_bundle_metadata(staging, metadata)
        if adult_dir is not None:
            spec, quality, _ = population.fit_population_check(
                staging, split["train"], split["val"], adult_dir, staging
            )
            write_bundle_metadata(
                staging, metadata.model_copy(update={"population_check": spec, "image_quality": quality})
            )
    return out_dir


def _write_models(run_dir: Path, run: RunModel, staging: Path, parity_tolerance: float) -> Conversion:
    """model.keras (calibration baked in) and model.onnx converted from it, checked against each other."""
    import keras

    image_size = run.config.image_size
    calibration = LogitCalibration.model_validate(run.evaluation["calibration"])
    checkpoint = layout.model_dir(run_dir, run.backbone) / layout.BEST_CHECKPOINT
    model = bake_calibration(keras.models.load_model(checkpoint, compile=False), calibration)
    model.save(staging / KERAS_FILENAME)
    served, explain_activation = served_model(model)
    input_name, output_name = convert_to_onnx(served, image_size, staging / ONNX_FILENAME)
    probe = decode_samples(
        layout.read_run_split(run_dir)["val"][:PARITY_IMAGES], (image_size, image_size), desc="parity"
    )
    difference = parity_check(staging / ONNX_FILENAME, model, probe.images, parity_tolerance)
    log.info("ONNX/Keras parity on %d validation images: max |dp| = %.2e", len(probe.labels), difference)
    return Conversion(input_name, output_name, difference, parity_tolerance, explain_activation)


def write_input_check(staging: Path, train: list, val: list, image_size: int, seed: int) -> InputCheckSpec:
    """Fit the input check through the staged model.onnx on the training X-rays, threshold it on validation."""
    import keras
    import onnxruntime as ort

    layer_names = ood.statistic_layers(keras.models.load_model(staging / KERAS_FILENAME, compile=False))
    size = (image_size, image_size)
    train_images = decode_samples(train, size, desc="input check: train").images[..., 0]  # (N, H, W)
    val_images = decode_samples(val, size, desc="input check: validation").images[..., 0]
    session = ort.InferenceSession(str(staging / ONNX_FILENAME), providers=["CPUExecutionProvider"])
    outputs = [o.name for o in session.get_outputs() if o.name.startswith(STATISTICS_OUTPUT_PREFIX)]
    fitted = ood.fit_input_check(session, layer_names, train_images, val_images, seed=seed)
    fitted.model.save(staging / INPUT_CHECK_FILENAME)
    return InputCheckSpec(
        sha256=sha256_file(staging / INPUT_CHECK_FILENAME),
        statistics_outputs=outputs,
        layers=list(fitted.model.layer_names),
        threshold=fitted.model.threshold,
        fitted_on=f"{len(train_images)} training X-rays (detector; orientation on {ood.THUMBNAIL_IMAGES} of them)",
        threshold_chosen_on=f"{len(val_images)} validation X-rays, {ood.VALIDATION_ACCEPTANCE:.1%} quantile",
        validation_acceptance=fitted.validation_acceptance,
        method=(
            f"max over {len(outputs)} depths of a Mahalanobis distance of channel mean/std features "
            f"({ood.SUBSPACE_DIMS}-dim principal subspace + residual), each normalised on validation; "
            "orientation, mirroring and polarity by logistic regression on 24x24 thumbnails"
        ),
    )


def add_input_check(
    bundle_dir: Path,
    data_dir: Path,
    split_path: Path,
    out_dir: Path,
    *,
    seed: int = 0,
    parity_tolerance: float = PARITY_TOLERANCE,
) -> Path:
    """Bring an existing bundle to the current served form: re-export model.onnx from model.keras with the
    statistics and explanation-activation outputs (`served_model`), fit the input check on the recorded training
    split, and write a schema-2 bundle to `out_dir` (staged, parity-checked). model.keras is not changed.
    """
    import keras

    from pneumonia.bundle import read_metadata
    from training.data import read_split

    metadata = read_metadata(bundle_dir)
    split = read_split(split_path, data_dir)
    if not split["train"] or not split["val"]:
        raise ExportError(f"{split_path}: needs training and validation rows")
    # model.onnx and the input check are rewritten; the population check reads the same statistics outputs of
    # the same model.keras, so it stays valid and is kept
    keep = lambda name: name not in (ONNX_FILENAME, INPUT_CHECK_FILENAME)  # noqa: E731
    with staged_bundle(out_dir, bundle_dir, keep=keep) as staging:
        model = keras.models.load_model(staging / KERAS_FILENAME, compile=False)
        served, explain_activation = served_model(model)
        size = metadata.input_size[0]
        input_name, output_name = convert_to_onnx(served, size, staging / ONNX_FILENAME)
        probe = decode_samples(split["val"][:PARITY_IMAGES], (size, size), desc="parity")
        difference = parity_check(staging / ONNX_FILENAME, model, probe.images, parity_tolerance)
        input_check = write_input_check(staging, split["train"], split["val"], size, seed)
        updated = metadata.model_copy(
            update={
                "schema_version": max(2, metadata.schema_version),
                "onnx_input_name": input_name,
                "onnx_output_name": output_name,
                "input_check": input_check,
                "explain_activation": explain_activation,
                "training": {**metadata.training, "parity_max_abs_diff": difference},
                "checksums": FileChecksums(
                    onnx_sha256=sha256_file(staging / ONNX_FILENAME), keras_sha256=metadata.checksums.keras_sha256
                ),
            }
        )
        write_bundle_metadata(staging, updated)
    return out_dir


def add_population_check(
    bundle_dir: Path,
    data_dir: Path,
    split_path: Path,
    adult_dir: Path,
    out_dir: Path,
    *,
    declared: Population | None = None,
    evidence_dir: Path | None = None,
) -> Path:
    """Bring a schema-2 bundle to schema 3: declare its population (`declared`, else known from its dataset's
    name), fit the population check and the image-quality range on its recorded split against the adult films,
    and write the bundle to `out_dir` (staged; the models are not changed). `evidence_dir`: also write the
    generalisation and external-test numbers there."""
    from pneumonia.bundle import read_metadata
    from training.data import read_split

    metadata = read_metadata(bundle_dir)
    if metadata.input_check is None:
        raise ExportError(f"{bundle_dir}: schema {metadata.schema_version} has no input check; run input-check first")
    declared = declared or metadata.population or population.declared_population(metadata.data.dataset)
    if declared is None:
        raise ExportError(
            f"{bundle_dir}: the population of {metadata.data.dataset!r} is not known here; give it with --population"
        )
    split = read_split(split_path, data_dir)
    if not split["train"] or not split["val"]:
        raise ExportError(f"{split_path}: needs training and validation rows")
    keep = lambda name: name != population.POPULATION_CHECK_FILENAME  # noqa: E731 - it is rewritten
    with staged_bundle(out_dir, bundle_dir, keep=keep) as staging:
        spec, quality, evidence = population.fit_population_check(
            bundle_dir, split["train"], split["val"], adult_dir, staging
        )
        updated = metadata.model_copy(
            update={
                "schema_version": 3,
                "population": declared,
                "population_check": spec,
                "image_quality": quality,
            }
        )
        write_bundle_metadata(staging, updated)
    if evidence_dir is not None:
        population.write_evidence(evidence_dir, evidence)
    return out_dir


@contextmanager
def staged_bundle(
    out_dir: Path, source: Path | None = None, keep: Callable[[str], bool] | None = None
) -> Iterator[Path]:
    """A staging directory next to `out_dir` (empty, or holding `source`'s files for which `keep(name)`),
    moved into place only if the block completes: a failure leaves no debris and the old bundle intact."""
    staging = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    if source is not None:
        for path in source.iterdir():
            if path.is_file() and (keep is None or keep(path.name)):
                shutil.copy2(path, staging / path.name)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    replace_directory(staging, out_dir)


def write_bundle_metadata(staging: Path, metadata: BundleMetadata) -> BundleMetadata:
    """Validate (model_copy does not), then write metadata.json and the card generated from it."""
    metadata = BundleMetadata.model_validate(metadata.model_dump())
    write_metadata(staging, metadata)
    (staging / MODEL_CARD_FILENAME).write_text(model_card(metadata))
    return metadata


def replace_directory(staging: Path, target: Path) -> None:
    previous = target.with_name(target.name + ".previous")
    shutil.rmtree(previous, ignore_errors=True)
    if target.exists():
        target.rename(previous)
    staging.rename(target)
    shutil.rmtree(previous, ignore_errors=True)


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
        lines.append(
            f"Image quality: films with a 5th-95th percentile spread below {quality.min_dynamic_range:.0f} gray levels "
            f"or a mean outside {quality.min_mean:.0f}-{quality.max_mean:.0f} ({quality.measured_on}) are "
            f"{'refused' if quality.action == 'refuse' else 'answered with a warning'} ({quality.evidence})."
        )
    return "\n\n".join(lines)


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
