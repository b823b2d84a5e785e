"""The simulated-site study (results/site_calibration) runs on cached scores; here on synthetic ones, so that the
code that writes the evidence cannot break unnoticed. The real run needs ../shared/data and is never a test."""

from __future__ import annotations

import numpy as np
import pytest

from studies.site_calibration_study import SIZES, SiteScores, main, markdown, run_study
from training.metrics import sigmoid
from training.recalibrate import SourcePoints


def synthetic_scores(rng: np.random.Generator) -> SiteScores:
    """Three sites of 150 NORMAL + 300 PNEUMONIA: as validation, shifted up by 3 logits, and refused outright."""
    labels = np.r_[np.zeros(150, int), np.ones(300, int)]
    clean = np.where(labels == 1, rng.normal(6, 3, len(labels)), rng.normal(-4, 1.5, len(labels)))
    logits = np.stack([clean, clean + 3.0, clean])
    accepted = np.ones_like(logits, dtype=bool)
    accepted[2] = False
    return SiteScores(
        sites=["clean", "shifted", "refused"], probabilities=sigmoid(logits), accepted=accepted, labels=labels,
        patients=np.array([f"P{i}" for i in range(len(labels))]), paths=[f"{i}.png" for i in range(len(labels))],
        bundle="synthetic", onnx_sha256="0" * 64, refusal_reasons={"refused": {"not like the chest X-rays": 450}},
    )  # fmt: skip


def test_the_study_runs_and_writes_its_readme():
    rng = np.random.default_rng(0)
    source = SourcePoints(
        logits={"youden": -0.5, "max_f1": -1.0, "sensitivity_95": 1.0, "balanced_0.5": 0.0},
        default="sensitivity_95",
        prevalence=0.74,
    )
    results = run_study(synthetic_scores(rng), source, draws=4)
    assert set(results["sites"]) == {"clean", "shifted"} and set(results["not_calibratable"]) == {"refused"}
    assert set(results["judged_check_off"]) == {"refused"} and set(results["judged"]) == {"clean", "shifted"}
    assert results["recommended_per_class"] in SIZES
    shifted = results["sites"]["shifted"]["validation_thresholds"]["sensitivity_95"]
    assert shifted["specificity"] < results["sites"]["clean"]["validation_thresholds"]["sensitivity_95"]["specificity"]
    judged = results["judged"]["shifted"]
    assert judged["shrunk"]["sensitivity_95"]["specificity"] > judged["none"]["sensitivity_95"]["specificity"]
    text = markdown(results)
    assert f"**Recommended: {results['recommended_per_class']} labelled images per class**" in text
    for section in ("sample-size", "choice", "judged"):  # docs/new-site.md includes these by name
        assert f"--8<-- [start:{section}]" in text and f"--8<-- [end:{section}]" in text


def test_without_the_dataset_it_stops_with_a_message(tmp_path):
    with pytest.raises(SystemExit, match="needs the dataset"):
        main(["--data", str(tmp_path / "none"), "--split", str(tmp_path / "none.csv"), "--cache", str(tmp_path),
              "--out", str(tmp_path / "out")])  # fmt: skip
    assert not (tmp_path / "out").exists()


def test_the_committed_readme_is_the_renderer_of_the_committed_json():
    """results/site_calibration/README.md is `markdown(study.json)`, every number generated; its sample-size table
    (included in docs/new-site.md) has every operating point the study measured, and says why stress_youden is not
    one of them."""
    import json
    from pathlib import Path

    results_dir = Path(__file__).resolve().parents[2] / "results" / "site_calibration"
    results = json.loads((results_dir / "study.json").read_text())
    text = (results_dir / "README.md").read_text()
    assert markdown(results) == text
    table = text.split("--8<-- [start:sample-size]")[1].split("--8<-- [end:sample-size]")[0]
    measured = set(results["pooled"]["sample_size"]["10"][results["default_method"]])
    assert all(f" {name} " in table for name in measured)
    assert "stress_youden" not in measured and "Not in the table: `stress_youden`" in table
