"""The bundle's metadata is built from the run's records alone (training.export.build_metadata, no I/O)."""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from pneumonia.bundle import ExplainActivation, FileChecksums, SplitMetrics
from training import export, layout
from training.cli import main
from training.errors import ExportError, TrainingError
from training.onnx_export import Conversion

CARD = "# A dataset\n\n- Source: somewhere, 2024\n- License: CC0. Attribute it.\n- Patients: adults from two hospitals. More prose.\n"


def _build(run: export.RunModel):
    return export.build_metadata(
        run,
        default_point=run.evaluation["default_operating_point"],
        validation=SplitMetrics.model_validate(run.evaluation["validation"]),
        conversion=Conversion("image", "probability", 1e-6, 1e-3, ExplainActivation(layer="block_6_expand_relu")),
        checksums=FileChecksums(onnx_sha256="0" * 64, keras_sha256="1" * 64),
        created_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
    )


@pytest.fixture
def run_model(tiny_run) -> export.RunModel:
    return export.read_run_model(tiny_run, "mobilenetv2")


def _with_auc(run: export.RunModel, auc: float) -> export.RunModel:
    validation = {**run.evaluation["validation"]}
    validation["metrics"] = {**validation["metrics"], "roc_auc": {"value": auc, "ci_low": None, "ci_high": None}}
    return replace(run, evaluation={**run.evaluation, "validation": validation})


def test_the_dataset_card_describes_the_data(run_model):
    summary = {**run_model.data_summary, "provenance": {**run_model.data_summary["provenance"], "card": CARD}}
    metadata = _build(replace(run_model, data_summary=summary))
    assert (metadata.data.dataset, metadata.data.source, metadata.data.licence) == (
        "A dataset",
        "somewhere, 2024",
        "CC0",
    )
    assert metadata.data.card == CARD
    assert any("adults from two hospitals" in item for item in metadata.limitations)
    assert metadata.version == "20260102-030405"


@pytest.mark.parametrize("weights, from_scratch", [("none", True), ("imagenet", False)])
def test_from_scratch_is_said_only_without_pretrained_weights(run_model, weights, from_scratch):
    config = run_model.config.model_copy(update={"weights": weights})
    metadata = _build(replace(run_model, config=config))
    assert any("from scratch" in item for item in metadata.limitations) is from_scratch
    assert not any("could not be downloaded" in item for item in metadata.limitations)
    assert metadata.training["weights"] == weights


def test_local_weights_are_recorded_by_file_name(run_model, tmp_path):
    weights = tmp_path / "backbone.weights.h5"
    config = run_model.config.model_copy(update={"weights": str(weights)})
    metadata = _build(replace(run_model, config=config))
    assert metadata.training["weights"] == "local file backbone.weights.h5"
    assert not any("from scratch" in item for item in metadata.limitations)


def test_a_model_near_chance_is_refused_unless_forced(run_model, caplog):
    with pytest.raises(ExportError, match="near chance.*--force"):
        export.check_quality(_with_auc(run_model, 0.55), force=False)
    with caplog.at_level(logging.WARNING, logger="training.export"):
        export.check_quality(_with_auc(run_model, 0.55), force=True)
    assert "WARNING" in caplog.text and "0.550" in caplog.text
    export.check_quality(_with_auc(run_model, 0.6), force=False)


def test_export_command_refuses_a_model_near_chance(tiny_run, tmp_path, capsys):
    import json
    import shutil

    run = shutil.copytree(tiny_run, tmp_path / "run", ignore=shutil.ignore_patterns("*.keras", "*.png"))
    (run / "models" / "mobilenetv2" / layout.BEST_CHECKPOINT).touch()  # present; never read before the refusal
    path = run / "models" / "mobilenetv2" / layout.EVALUATION_FILE
    evaluation = json.loads(path.read_text())
    evaluation["validation"]["metrics"]["roc_auc"]["value"] = 0.55
    path.write_text(json.dumps(evaluation))
    assert main(["export", "--run", str(run), "--out", str(tmp_path / "bundle"), "--model", "mobilenetv2"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "near chance" in err and "--force" in err
    assert not (tmp_path / "bundle").exists() and not (tmp_path / "bundle.partial").exists()


def test_export_errors_are_training_errors():
    assert issubclass(ExportError, TrainingError)
