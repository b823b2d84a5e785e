"""`evaluate`: validation (and, when present, test) metrics for every model of a run, then the comparison.

Order of work per model, all choices on validation only:
    predict val -> fit Platt calibration on val -> stress check on perturbed val -> operating points on
    calibrated val (one of them robust to the perturbations) -> metrics with bootstrap intervals at the
    default point -> (test metrics at the validation-chosen threshold)
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from pneumonia.bundle import LogitCalibration
from training import report
from training.data import DecodedSet, decode_subset, find_split_dir, scan_split
from training.fit import predict_probabilities
from training.layout import (
    BEST_CHECKPOINT,
    EVALUATION_FILE,
    PREDICTIONS_FILE,
    gradcam_grid_file,
    model_dirs,
    read_config,
    read_data_summary,
    read_run_split,
    read_training_summary,
)
from training.metrics import (
    binary_metrics,
    calibrate,
    expected_calibration_error,
    fit_platt,
    logits_from_probabilities,
    operating_points,
    split_metrics,
)
from training.stress import perturbed_predictions, stress_report

log = logging.getLogger(__name__)


def _test_samples(run_dir: Path, data_dir: Path | None) -> list:
    """Test images are reported, never used for a choice. From --data when given, else the recorded split."""
    if data_dir is not None:
        test_dir = find_split_dir(Path(data_dir), "test")
        return scan_split(test_dir) if test_dir is not None else []
    return read_run_split(run_dir)["test"]


class CalibratedPredictor:
    """Keras model probabilities with the validation-fitted logit calibration applied."""

    def __init__(self, model, calibration: LogitCalibration):
        self.model = model
        self.calibration = calibration

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return calibrate(predict_probabilities(self.model, images), self.calibration.scale, self.calibration.bias)


def evaluate_model(model_dir: Path, val: DecodedSet, test: DecodedSet | None, config) -> dict:
    import keras

    model = keras.models.load_model(model_dir / BEST_CHECKPOINT, compile=False)
    raw_val = predict_probabilities(model, val.images)
    if config.calibrate:
        scale, bias = fit_platt(val.labels, logits_from_probabilities(raw_val))
        calibration = LogitCalibration(method="platt", scale=scale, bias=bias)
    else:
        calibration = LogitCalibration(method="none", scale=1.0, bias=0.0)
    predictor = CalibratedPredictor(model, calibration)
    p_val = calibrate(raw_val, calibration.scale, calibration.bias)

    perturbed = perturbed_predictions(val.images, predictor)
    points = operating_points(val.labels, p_val, perturbed)
    default = next(p for p in points if p.name == config.default_operating_point)
    validation = split_metrics(
        "validation", val.labels, p_val, default.threshold, samples=config.bootstrap_samples, seed=config.seed
    )
    stress = stress_report(val.labels, perturbed, default.threshold, binary_metrics)
    evaluation = {
        "backbone": model_dir.name,
        "calibration": calibration.model_dump(),
        "ece_uncalibrated": expected_calibration_error(val.labels, raw_val),
        "default_operating_point": default.name,
        "operating_points": [p.model_dump() for p in points],
        "validation": validation.model_dump(),
        "stress": stress,
        "training": read_training_summary(model_dir),
    }
    arrays: dict[str, Any] = {"val_y": val.labels, "val_p": p_val, "val_p_uncalibrated": raw_val}
    if test is not None:
        p_test = predictor(test.images)
        test_metrics = split_metrics(
            "test", test.labels, p_test, default.threshold, samples=config.bootstrap_samples, seed=config.seed
        )
        evaluation["test"] = test_metrics.model_dump()
        arrays.update(test_y=test.labels, test_p=p_test)
    (model_dir / EVALUATION_FILE).write_text(json.dumps(evaluation, indent=2))
    np.savez_compressed(model_dir / PREDICTIONS_FILE, **arrays)
    report.plot_model(model_dir, evaluation, arrays)
    return evaluation


def evaluate_models(run_dir: Path, data_dir: Path | None) -> dict:
    config = read_config(run_dir)
    summary = read_data_summary(run_dir)
    subsets = read_run_split(run_dir, data_dir)
    val = decode_subset(subsets["val"], config, "val")
    test_samples = _test_samples(run_dir, data_dir)
    test = decode_subset(test_samples, config, "test") if test_samples else None
    evaluations = {}
    for name, model_dir in model_dirs(run_dir).items():
        if not (model_dir / BEST_CHECKPOINT).is_file():
            log.warning("%s has no checkpoint yet; skipped", name)
            continue
        log.info("evaluating %s", name)
        evaluations[name] = evaluate_model(model_dir, val, test, config)
    if not evaluations:
        raise report.ReportError(f"{run_dir}: no trained model to evaluate (run `train` first)")
    comparison = report.write_comparison(run_dir, evaluations, config, summary)
    best = comparison["best"]
    report.gradcam_grid(model_dirs(run_dir)[best], val, evaluations[best], run_dir / gradcam_grid_file(best))
    return comparison
