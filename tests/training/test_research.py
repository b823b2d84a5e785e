"""studies.research: the seed's questions answered from validation and the stress check only."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pneumonia.bundle import LogitCalibration, read_metadata
from studies import research
from training.metrics import calibrate
from training.stress import PERTURBATIONS

REPO = Path(__file__).resolve().parents[2]


def test_threshold_table_counts_and_pairs_against_the_reference():
    y = np.array([0] * 40 + [1] * 60)
    p = np.concatenate([np.linspace(0.0, 0.6, 40), np.linspace(0.4, 1.0, 60)])
    table = research.threshold_table(y, p, {"ref": 0.5, "low": 0.1, "high": 0.9}, reference="ref", samples=300, seed=0)
    assert table["ref"]["j_minus_reference"] == 0 and table["ref"]["j_minus_reference_ci"] == [0, 0]
    assert table["low"]["sensitivity"] == 1.0 and table["low"]["specificity"] == pytest.approx(
        (p[:40] < 0.1).mean(), abs=1e-4
    )
    assert table["high"]["sensitivity"] == pytest.approx((p[40:] >= 0.9).mean(), abs=1e-4)
    for row in table.values():
        for metric in ("sensitivity", "specificity"):
            low, high = row[f"{metric}_ci"]
            assert low <= row[metric] <= high
        low, high = row["j_minus_reference_ci"]
        assert low <= row["j_minus_reference"] <= high


def test_uncalibrated_undoes_the_bundles_platt_scaling():
    metadata = read_metadata(REPO / "models" / "default")
    calibration = metadata.calibration
    assert calibration.method == "platt"
    raw = np.linspace(0.01, 0.99, 50)
    served = calibrate(raw, calibration.scale, calibration.bias)
    np.testing.assert_allclose(research.uncalibrated(served, metadata), raw, atol=1e-9)
    unscaled = metadata.model_copy(update={"calibration": LogitCalibration(method="none", scale=1.0, bias=0.0)})
    np.testing.assert_allclose(research.uncalibrated(raw, unscaled), raw)


def test_plateau_is_where_every_later_epoch_stays_within_tolerance_of_the_best():
    aucs = [0.90, 0.95, 0.949, 0.93, 0.97, 0.968]
    history = [{"val_auc": a, "elapsed_s": 60.0 * (i + 1)} for i, a in enumerate(aucs)]
    assert research.plateau(history, 0.005) == {
        "epochs": 6,
        "best_epoch": 5,
        "best_val_auc": 0.97,
        "within_tolerance_from_epoch": 5,
        "tolerance": 0.005,
        "minutes_to_best": 5.0,
    }
    assert research.plateau(history, 0.045)["within_tolerance_from_epoch"] == 2
    # epoch 2 (0.95) is within 0.03 of the best, but epoch 4 (0.93) falls out again: epoch 2 does not count
    assert research.plateau(history, 0.03)["within_tolerance_from_epoch"] == 5


def test_a_run_whose_last_epoch_falls_out_of_tolerance_never_settles():
    aucs = [0.90, 0.97, 0.95]
    history = [{"val_auc": a, "elapsed_s": 60.0 * (i + 1)} for i, a in enumerate(aucs)]
    assert research.plateau(history, 0.01)["within_tolerance_from_epoch"] is None
    assert research.plateau(history, 0.03)["within_tolerance_from_epoch"] == 2


def test_one_command_writes_the_study_from_validation_only(tiny_run, tiny_dataset, tiny_bundle, tmp_path):
    out = tmp_path / "research"
    code = research.main(
        [
            "--bundle", str(tiny_bundle), "--data", str(tiny_dataset), "--split", str(tiny_run / "split.csv"),
            "--results", str(REPO / "results"), "--comparison", str(REPO / "results" / "comparison"),
            "--out", str(out), "--bootstrap-samples", "50",
        ]
    )  # fmt: skip
    assert code == 0
    study = json.loads((out / "research.json").read_text())
    thresholds = study["thresholds"]
    val_rows = sum(1 for line in (tiny_run / "split.csv").read_text().splitlines() if line.startswith("val,"))
    assert thresholds["n_validation"] == val_rows
    assert set(thresholds["conditions"]) == {"clean", *PERTURBATIONS}
    points = {p.name for p in read_metadata(tiny_bundle).operating_points}
    assert set(thresholds["thresholds"]) == {"seed_0.69", *points}
    assert set(thresholds["worst_case"]) == set(thresholds["thresholds"])
    assert "final192/mobilenetv2" in study["epochs"] and study["comparison"]["best"] == "mobilenetv2"
    assert (out / "thresholds.png").stat().st_size and (out / "epochs.png").stat().st_size
    assert "## Threshold tuning" in (out / "research.md").read_text()


def test_missing_dataset_is_a_clean_error(tiny_run, tiny_bundle, tmp_path, capsys):
    code = research.main(
        ["--bundle", str(tiny_bundle), "--data", str(tmp_path / "nowhere"), "--split", str(tiny_run / "split.csv")]
    )
    assert code == 2 and "not found" in capsys.readouterr().err
