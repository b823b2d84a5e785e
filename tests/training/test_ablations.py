"""`python -m studies.ablations`: the seed spread is the yardstick, differences are judged against it, and an
arm that has not been published is listed as missing, never filled in."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from studies.ablations import main

pytestmark = pytest.mark.fast

STRESS_NAMES = ("contrast_low", "noise", "blur")


def publish(
    results: Path, run: str, backbone: str, auc: float, stress_min: float, per_epoch_stress=None, gap: float = 0.0
) -> None:
    """A published arm as `training publish` lays it out: models/<backbone>/{evaluation.json,history.csv}."""
    model_dir = results / run / "models" / backbone
    model_dir.mkdir(parents=True)

    def estimate(value: float) -> dict:
        return {"value": value, "ci_low": value - 0.01, "ci_high": min(value + 0.01, 1.0)}

    evaluation = {
        "validation": {"metrics": {name: estimate(v) for name, v in
                                   {"roc_auc": auc, "sensitivity": 0.95, "specificity": 0.9, "ece": 0.02}.items()}},
        "training": {"epochs_run": 3, "best_epoch": 3, "train_seconds": 600.0},
        "stress": {name: {"roc_auc": stress_min + 0.001 * i} for i, name in enumerate(STRESS_NAMES)},
        "ece_uncalibrated": 0.08,
    }  # fmt: skip
    (model_dir / "evaluation.json").write_text(json.dumps(evaluation))
    header = "epoch,auc,val_auc" + (",stress_min_auc" if per_epoch_stress else "")
    rows = [header]
    for epoch in range(3):
        val_auc = auc - 0.02 + 0.01 * epoch
        row = f"{epoch},{val_auc + gap},{val_auc}"  # training AUC `gap` above validation
        rows.append(row + (f",{per_epoch_stress[epoch]}" if per_epoch_stress else ""))
    (model_dir / "history.csv").write_text("\n".join(rows) + "\n")


def test_differences_are_judged_against_the_seed_spread_and_missing_arms_are_listed(tmp_path, capsys):
    results = tmp_path / "results"
    publish(results, "final192", "mobilenetv2", 0.990, 0.980)
    publish(results, "ablation_seed43", "mobilenetv2", 0.992, 0.978, gap=0.005)  # gap spread over seeds: 0.005
    publish(results, "ablation_seed44", "mobilenetv2", 0.991, 0.981)  # spread: AUC 0.002, stress 0.003
    publish(results, "ablation_imbalance_none", "mobilenetv2", 0.9915, 0.990)  # AUC within, stress beyond
    publish(results, "ablation_no_aug", "mobilenetv2", 0.990, 0.980, gap=0.02)
    publish(results, "ablation_equal_epochs/densenet121", "densenet121", 0.97, 0.95, [0.90, 0.96, 0.93])
    publish(results, "ablation_equal_epochs/mobilenetv2", "mobilenetv2", 0.98, 0.96, [0.91, 0.95, 0.96])

    assert main(["--results", str(results), "--out", str(tmp_path / "out")]) == 0
    report = json.loads((tmp_path / "out" / "ablations.json").read_text())
    markdown = (tmp_path / "out" / "ablations.md").read_text()

    assert report["seed_spread"] == {"n_seeds": 3, "roc_auc": 0.002, "stress_min_auc": 0.003}
    imbalance = report["sections"]["imbalance"]
    assert "none leads on validation ROC-AUC by 0.0015, within the seed spread" in imbalance["verdict"]
    assert "none leads on stress-minimum AUC by 0.0100, beyond the seed spread" in imbalance["verdict"]
    assert imbalance["missing"] == ["ablation_imbalance_resample"]
    # the first epochs: the two arms 0.0015 apart, the three seeds 0.002 apart at every epoch
    assert "epoch 1: the arms span 0.0015 (within the seeds' spread 0.0020)" in imbalance["verdict"]
    assert "| resample | not published yet (`results/ablation_imbalance_resample`) |" in markdown

    augmentation = report["sections"]["augmentation"]["verdict"]
    assert (
        "The widest train-val gap is none (0)'s, 0.0200 above the next arm's (beyond the seeds' gap spread (0.0050))"
        in augmentation
    )

    backbones = report["sections"]["backbones"]
    assert [row["label"] for row in backbones["rows"]] == ["densenet121", "mobilenetv2"]
    # densenet121's stress minimum peaks at epoch 2 and ends 0.03 lower: beyond a 0.003 spread
    assert "densenet121: validation ROC-AUC peaks at epoch 3, the stress minimum at epoch 2" in backbones["verdict"]
    assert "is 0.0300 below that stress peak (beyond the seed spread)" in backbones["verdict"]
    assert (tmp_path / "out" / "ablation_backbones_per_epoch.png").stat().st_size > 1000
    assert "![ablation_backbones_per_epoch.png](ablation_backbones_per_epoch.png)" in markdown


def test_a_lead_beyond_the_spread_of_two_seeds_is_called_suggestive(tmp_path):
    results = tmp_path / "results"
    publish(results, "final192", "mobilenetv2", 0.990, 0.980)
    publish(results, "ablation_seed43", "mobilenetv2", 0.991, 0.981)
    publish(results, "ablation_imbalance_none", "mobilenetv2", 0.999, 0.999)
    assert main(["--results", str(results), "--out", str(tmp_path / "out")]) == 0
    verdict = json.loads((tmp_path / "out" / "ablations.json").read_text())["sections"]["imbalance"]["verdict"]
    assert "beyond the seed spread" in verdict and "With 2 seeds the spread is a floor" in verdict


def test_without_two_seeds_nothing_is_called_a_difference(tmp_path):
    results = tmp_path / "results"
    publish(results, "final192", "mobilenetv2", 0.990, 0.980)
    publish(results, "ablation_imbalance_none", "mobilenetv2", 0.999, 0.999)
    assert main(["--results", str(results), "--out", str(tmp_path / "out")]) == 0
    report = json.loads((tmp_path / "out" / "ablations.json").read_text())
    assert report["seed_spread"] is None
    assert "no seed spread published yet to judge it against" in report["sections"]["imbalance"]["verdict"]
    assert "beyond" not in report["sections"]["imbalance"]["verdict"]


def test_a_missing_results_directory_is_a_clear_error(tmp_path, capsys):
    assert main(["--results", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")]) == 2
    assert "is not a directory of published runs" in capsys.readouterr().err


def test_an_arm_that_trails_both_others_is_named_and_a_tie_is_called_a_tie(tmp_path):
    """The augmentation question as it stood: light and none tie on validation, but none falls far behind on the
    stress check. Comparing the leader with the runner-up alone would have hidden that."""
    results = tmp_path / "results"
    publish(results, "final192", "mobilenetv2", 0.996, 0.9901)
    publish(results, "ablation_seed43", "mobilenetv2", 0.995, 0.9895)  # spread: AUC 0.001, stress 0.0006
    publish(results, "candidates/light_aug", "mobilenetv2", 0.997, 0.9902)
    publish(results, "ablation_no_aug", "mobilenetv2", 0.997, 0.9748)

    assert main(["--results", str(results), "--out", str(tmp_path / "out")]) == 0
    verdict = json.loads((tmp_path / "out" / "ablations.json").read_text())["sections"]["augmentation"]["verdict"]
    assert "tie on validation ROC-AUC" in verdict and "leads on validation ROC-AUC" not in verdict
    assert "shipped (1.25) trails" in verdict and "on validation ROC-AUC by 0.0010, within the seed spread" in verdict
    assert "light (0.5) leads on stress-minimum AUC by 0.0001, within the seed spread (0.0006)" in verdict
    assert "none (0) trails light (0.5) on stress-minimum AUC by 0.0154, beyond the seed spread (0.0006)" in verdict
