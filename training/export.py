"""`export`: turn a trained, evaluated model of a run into a model bundle the service can serve.

The bundle is written into a staging directory and moved into place only after the ONNX/Keras parity
check passes, so a failed export never leaves a half-written bundle behind (or destroys the old one).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np

from app import __version__
from app.bundle import (
    KERAS_FILENAME,
    MODEL_CARD_FILENAME,
    ONNX_FILENAME,
    BundleMetadata,
    DataSummary,
    FileChecksums,
    LogitCalibration,
    PARITY_TOLERANCE,
    OperatingPoint,
    Preprocessing,
    SplitMetrics,
    sha256_file,
    utc_now,
    write_metadata,
)
from training.backbones import BACKBONES, LOGIT_LAYER
from training.data import decode_samples
from training.evaluate import EVALUATION_FILE, PREDICTIONS_FILE
from training.fit import BEST_CHECKPOINT
from training.metrics import split_metrics
from training.run import MODELS_DIR, read_config, read_data_summary, read_run_split

log = logging.getLogger(__name__)

ONNX_INPUT_NAME = "image"
ONNX_OPSET = 17
PARITY_IMAGES = 64

INTENDED_USE = (
    "Research and education: exploring how a convolutional network trained on pediatric chest X-rays "
    "separates pneumonia from normal images, and inspecting its Grad-CAM explanations. Not for clinical use."
)


class ExportError(RuntimeError):
    pass


def bake_calibration(model, calibration: LogitCalibration):
    """Fold scale * logit + bias into the logit Dense layer: the model then outputs calibrated probabilities."""
    logit = model.get_layer(LOGIT_LAYER)
    kernel, bias = logit.get_weights()
    logit.set_weights([kernel * calibration.scale, bias * calibration.scale + calibration.bias])
    return model


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


def limitations(config, data_summary: dict) -> list[str]:
    items = [
        "Trained on pediatric (age 1-5) anterior-posterior chest X-rays from a single hospital "
        "(Guangzhou Women and Children's Medical Center); not validated on adults, other sites, devices or populations.",
        "Not externally validated. All metrics come from a patient-level validation split of the same dataset, "
        "which flatters: expect lower performance elsewhere.",
        "Operating points were tuned on validation data; the positive fraction of the data "
        f"({data_summary['counts']['train']['PNEUMONIA']} of {sum(data_summary['counts']['train'].values())} training images) "
        "is far above any screening population, so predictive values do not transfer.",
        "Grad-CAM heatmaps show which regions drove the score; they are coarse and are not lesion localisation.",
        f"Images are reduced to {config.image_size}x{config.image_size} grayscale; fine detail is lost.",
        "Bacterial and viral pneumonia are merged into one class; other findings are out of scope.",
    ]
    if config.weights == "none":
        items.insert(0, "Trained from scratch without ImageNet weights (they could not be downloaded on the training machine).")
    return items


def _validation_at(point: OperatingPoint, model_dir: Path, evaluation: dict, config) -> SplitMetrics:
    if point.name == evaluation["default_operating_point"]:
        return SplitMetrics.model_validate(evaluation["validation"])
    arrays = np.load(model_dir / PREDICTIONS_FILE)
    return split_metrics("validation", arrays["val_y"], arrays["val_p"], point.threshold, samples=config.bootstrap_samples, seed=config.seed)


def export_bundle(
    run_dir: Path,
    out_dir: Path,
    *,
    model_name: str | None = None,
    operating_point: str | None = None,
    parity_tolerance: float = PARITY_TOLERANCE,
) -> Path:
    import keras

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    comparison_path = run_dir / "comparison.json"
    if not comparison_path.is_file():
        raise ExportError(f"{run_dir}: no comparison.json; run `python -m training evaluate --run {run_dir}` first")
    name = model_name or json.loads(comparison_path.read_text())["best"]
    model_dir = run_dir / MODELS_DIR / name
    if not (model_dir / EVALUATION_FILE).is_file() or not (model_dir / BEST_CHECKPOINT).is_file():
        raise ExportError(f"{model_dir}: model {name!r} is not trained and evaluated in this run")
    evaluation = json.loads((model_dir / EVALUATION_FILE).read_text())
    config = read_config(run_dir)
    data_summary = read_data_summary(run_dir)
    points = [OperatingPoint.model_validate(p) for p in evaluation["operating_points"]]
    default_name = operating_point or evaluation["default_operating_point"]
    if default_name not in {p.name for p in points}:
        raise ExportError(f"unknown operating point {default_name!r}; choose from {[p.name for p in points]}")
    default_point = next(p for p in points if p.name == default_name)

    staging = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        calibration = LogitCalibration.model_validate(evaluation["calibration"])
        model = bake_calibration(keras.models.load_model(model_dir / BEST_CHECKPOINT, compile=False), calibration)
        model.save(staging / KERAS_FILENAME)
        input_name, output_name = convert_to_onnx(model, config.image_size, staging / ONNX_FILENAME)

        val_samples = read_run_split(run_dir)["val"][:PARITY_IMAGES]
        probe = decode_samples(val_samples, (config.image_size, config.image_size), desc="parity")
        difference = parity_check(staging / ONNX_FILENAME, model, probe.images, parity_tolerance)
        log.info("ONNX/Keras parity on %d validation images: max |dp| = %.2e", len(probe.labels), difference)

        training_info = evaluation.get("training", {})
        metadata = BundleMetadata(
            name=f"{name}-{config.image_size}",
            version=utc_now().strftime("%Y%m%d-%H%M%S"),
            backbone=name,
            package_version=__version__,
            created_at=utc_now(),
            preprocessing=Preprocessing(input_height=config.image_size, input_width=config.image_size),
            onnx_input_name=input_name,
            onnx_output_name=output_name,
            gradcam_layer=BACKBONES[name].gradcam_layer,
            logit_layer=LOGIT_LAYER,
            calibration=calibration,
            default_operating_point=default_name,
            operating_points=points,
            validation=_validation_at(default_point, model_dir, evaluation, config),
            stress=evaluation["stress"],
            training={
                "image_size": config.image_size,
                "weights": "imagenet" if config.weights == "imagenet" else ("none" if config.weights == "none" else "local file"),
                "epochs_run": training_info.get("epochs_run"),
                "best_epoch": training_info.get("best_epoch"),
                "train_seconds": training_info.get("train_seconds"),
                "batch_size": config.batch_size,
                "learning_rate": config.learning_rate,
                "augment_strength": config.augment_strength,
                "bn_momentum": config.bn_momentum,
                "seed": config.seed,
                "parity_max_abs_diff": difference,
                "parity_tolerance": parity_tolerance,
            },
            data=DataSummary(
                dataset="Chest X-Ray Images (Pneumonia), Kermany et al. 2018 (pediatric, Guangzhou)",
                source="Kermany, Zhang, Goldbaum (2018), Mendeley Data v2, doi:10.17632/rscbjbr9sj.2",
                licence="CC BY 4.0",
                split_method=data_summary["split_method"],
                split_seed=data_summary["split_seed"],
                counts=data_summary["counts"],
            ),
            intended_use=INTENDED_USE,
            limitations=limitations(config, data_summary),
            checksums=FileChecksums(
                onnx_sha256=sha256_file(staging / ONNX_FILENAME), keras_sha256=sha256_file(staging / KERAS_FILENAME)
            ),
        )
        write_metadata(staging, metadata)
        (staging / MODEL_CARD_FILENAME).write_text(model_card(metadata))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # a failed export leaves no debris next to the old bundle
        raise
    _replace_directory(staging, out_dir)
    return out_dir


def _replace_directory(staging: Path, target: Path) -> None:
    previous = target.with_name(target.name + ".previous")
    shutil.rmtree(previous, ignore_errors=True)
    if target.exists():
        target.rename(previous)
    staging.rename(target)
    shutil.rmtree(previous, ignore_errors=True)


def _estimate(metrics: dict, key: str) -> str:
    e = metrics[key]
    return f"{e.value:.3f}" if e.ci_low is None else f"{e.value:.3f} (95% CI {e.ci_low:.3f}-{e.ci_high:.3f})"


def model_card(metadata: BundleMetadata) -> str:
    """A Markdown model card generated from the metadata alone, so the two cannot disagree."""
    v = metadata.validation
    metric_rows = "\n".join(
        f"| {key} | {_estimate(v.metrics, key)} |" for key in ("roc_auc", "pr_auc", "sensitivity", "specificity", "accuracy", "precision", "f1", "brier", "ece")
    )
    point_rows = "\n".join(
        f"| {p.name}{' (default)' if p.name == metadata.default_operating_point else ''} | {p.threshold:.4f} | "
        f"{p.sensitivity:.3f} | {p.specificity:.3f} | {p.description} |"
        for p in metadata.operating_points
    )
    stress_rows = "\n".join(
        f"| {name} | {s['roc_auc']:.3f} | {s['sensitivity']:.3f} | {s['specificity']:.3f} |" for name, s in metadata.stress.items()
    )
    (tn, fp), (fn, tp) = v.confusion_matrix
    counts = "; ".join(f"{split}: {c.get('NORMAL', 0)} NORMAL / {c.get('PNEUMONIA', 0)} PNEUMONIA" for split, c in metadata.data.counts.items() if sum(c.values()))
    limitations_md = "\n".join(f"- {item}" for item in metadata.limitations)
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
Split: {metadata.data.split_method}. Images: {counts}.

## Validation metrics (default operating point `{metadata.default_operating_point}`, threshold {v.threshold:.4f})
Measured on {v.n_images} validation images ({v.n_positive} PNEUMONIA), 95% stratified bootstrap intervals.

| Metric | Value |
|---|---|
{metric_rows}

Confusion matrix: TN {tn}, FP {fp}, FN {fn}, TP {tp}.

## Operating points (all chosen on validation)
| Name | Threshold | Val sensitivity | Val specificity | Rule |
|---|---|---|---|---|
{point_rows}

## Stress check (validation images perturbed; threshold of the default point)
| Perturbation | ROC-AUC | Sensitivity | Specificity |
|---|---|---|---|
{stress_rows}

## Limitations
{limitations_md}

## Research use only
{metadata.disclaimer}
"""
