"""`export`: turn a trained, evaluated model of a run into a model bundle the service can serve.

The bundle is written into a staging directory and moved into place only after the ONNX/Keras parity
check passes, so a failed export never leaves a half-written bundle behind (or destroys the old one).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from pneumonia import __version__
from pneumonia.bundle import (
    KERAS_FILENAME,
    ONNX_FILENAME,
    PARITY_TOLERANCE,
    BundleMetadata,
    DataSummary,
    FileChecksums,
    LogitCalibration,
    OperatingPoint,
    Preprocessing,
    SplitMetrics,
    sha256_file,
    utc_now,
)
from training import layout, population, provenance
from training.backbones import BACKBONES, LOGIT_LAYER
from training.bundle_checks import write_input_check
from training.config import TrainConfig
from training.data import decode_samples
from training.errors import ExportError
from training.metrics import split_metrics
from training.onnx_export import (
    PARITY_IMAGES,
    Conversion,
    bake_calibration,
    convert_to_onnx,
    parity_check,
    served_model,
)
from training.staging import staged_bundle, write_bundle_metadata

log = logging.getLogger(__name__)

# Below this validation ROC-AUC a model is near chance: `export` refuses it unless forced.
MIN_VALIDATION_AUC = 0.6

INTENDED_USE = (
    "Research and education: exploring how a convolutional network trained on chest X-rays separates "
    "pneumonia from normal images, and inspecting its Grad-CAM explanations. Not for clinical use."
)


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
