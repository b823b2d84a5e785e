"""Every bad input to the command line ends in a one-line error and exit code 2, not a traceback."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys

import pytest

from pneumonia.imaging import IMAGE_SUFFIXES
from training.backbones import WeightsError
from training.cli import UsageError, build_parser, main
from training.config import ConfigError
from training.data import DatasetError
from training.errors import ExportError, TrainingError
from training.provenance import ProvenanceError
from training.report import ReportError


def _error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def test_missing_dataset(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "run")]) == 2
    assert "does not exist" in _error(capsys)
    assert not (tmp_path / "run").exists()


def test_dataset_without_train_folder_leaves_no_run_directory(tmp_path, capsys):
    """A later attempt must not 'resume' the debris of a run that never started."""
    (tmp_path / "data").mkdir()
    assert main(["train", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "run")]) == 2
    assert "no train/ folder" in _error(capsys)
    assert not (tmp_path / "run").exists()


def test_a_failed_train_keeps_a_directory_it_did_not_create(tmp_path, capsys):
    (tmp_path / "data").mkdir()
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "mine.txt").write_text("kept")
    assert main(["train", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "run")]) == 2
    assert (tmp_path / "run" / "mine.txt").read_text() == "kept"


def test_missing_class_folder(tmp_path, capsys):
    (tmp_path / "data" / "train" / "NORMAL").mkdir(parents=True)
    assert main(["train", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "run")]) == 2
    assert "PNEUMONIA missing" in _error(capsys)


def test_empty_class_folder(tmp_path, capsys):
    for name in ("NORMAL", "PNEUMONIA"):
        (tmp_path / "data" / "train" / name).mkdir(parents=True)
    assert main(["train", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "run")]) == 2
    error = _error(capsys)
    assert "no images" in error and all(suffix in error for suffix in IMAGE_SUFFIXES)  # what would have counted


def test_unknown_backbone(tiny_dataset, tmp_path, capsys):
    assert main(["train", "--data", str(tiny_dataset), "--out", str(tmp_path / "run"), "--models", "vgg16"]) == 2
    assert "unknown backbone" in _error(capsys)


def test_missing_weights_file(tiny_dataset, tmp_path, capsys):
    assert (
        main(
            ["train", "--data", str(tiny_dataset), "--out", str(tmp_path / "run"), "--weights", str(tmp_path / "w.h5")]
        )
        == 2
    )
    assert "does not exist" in _error(capsys)


def test_weights_file_that_does_not_fit(tiny_dataset, tmp_path, capsys):
    weights = tmp_path / "garbage.weights.h5"
    weights.write_bytes(b"\x89HDF\r\n\x1a\n" + b"0" * 100)
    code = main(["train", "--data", str(tiny_dataset), "--out", str(tmp_path / "run"), "--models", "mobilenetv2",
                 "--image-size", "32", "--epochs", "1", "--weights", str(weights)])  # fmt: skip
    assert code == 2
    assert "do not fit mobilenetv2" in _error(capsys)
    assert not (tmp_path / "run").exists()  # failed after the run was laid out, before any training


def test_invalid_config_file(tiny_dataset, tmp_path, capsys):
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"image_size": -3}))
    assert main(["train", "--data", str(tiny_dataset), "--out", str(tmp_path / "run"), "--config", str(config)]) == 2
    assert "image_size" in _error(capsys)


def test_resuming_with_another_recipe_is_refused(tiny_run, capsys):
    data = json.loads((tiny_run / "data.json").read_text())["data_dir"]
    assert main(["train", "--data", data, "--out", str(tiny_run), "--image-size", "64"]) == 2
    assert "another configuration" in _error(capsys)


def test_resuming_a_finished_run_skips_trained_models(tiny_run, capsys):
    data = json.loads((tiny_run / "data.json").read_text())["data_dir"]
    assert main(["train", "--data", data, "--out", str(tiny_run), "--no-evaluate"]) == 0
    assert "already trained" in (tiny_run / "training.log").read_text()


def test_a_run_without_a_trained_model_is_a_one_line_error(tiny_run, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    for name in ("config.json", "data.json", "split.csv"):  # laid out and split, but nothing trained yet
        shutil.copy(tiny_run / name, run / name)
    assert main(["evaluate", "--run", str(run)]) == 2
    assert "no trained model" in _error(capsys)


@pytest.mark.parametrize(
    "error", [UsageError, ConfigError, DatasetError, WeightsError, ReportError, ExportError, ProvenanceError]
)
def test_every_domain_error_is_a_training_error(error):
    assert issubclass(error, TrainingError)


def test_train_help_gives_every_option_a_default():
    verbs = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    train = verbs.choices["train"]
    options = [a for a in train._actions if a.option_strings and a.dest != "help"]
    assert len(options) >= 11
    undocumented = [
        a.option_strings[0] for a in options if "default" not in (a.help or "") and "required" not in (a.help or "")
    ]
    assert not undocumented
    help_text = " ".join(train.format_help().split())
    assert "square input size in pixels (default: 128)" in help_text and "dropout = 0.3" in help_text


def test_console_entry_point_help():
    out = subprocess.run(
        [sys.executable, "-m", "training", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for command in ("train", "evaluate", "export"):
        assert command in out
