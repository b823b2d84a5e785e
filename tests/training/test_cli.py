"""Every bad input to the command line ends in a one-line error and exit code 2, not a traceback."""

from __future__ import annotations

import json
import subprocess
import sys


from training.cli import main


def _error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def test_missing_dataset(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "run")]) == 2
    assert "does not exist" in _error(capsys)


def test_dataset_without_train_folder(tmp_path, capsys):
    (tmp_path / "data").mkdir()
    assert main(["train", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "run")]) == 2
    assert "no train/ folder" in _error(capsys)


def test_missing_class_folder(tmp_path, capsys):
    (tmp_path / "data" / "train" / "NORMAL").mkdir(parents=True)
    assert main(["train", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "run")]) == 2
    assert "PNEUMONIA missing" in _error(capsys)


def test_empty_class_folder(tmp_path, capsys):
    for name in ("NORMAL", "PNEUMONIA"):
        (tmp_path / "data" / "train" / name).mkdir(parents=True)
    assert main(["train", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "run")]) == 2
    assert "no images" in _error(capsys)


def test_unknown_backbone(tiny_dataset, tmp_path, capsys):
    assert main(["train", "--data", str(tiny_dataset), "--out", str(tmp_path / "run"), "--models", "vgg16"]) == 2
    assert "unknown backbone" in _error(capsys)


def test_missing_weights_file(tiny_dataset, tmp_path, capsys):
    assert main(["train", "--data", str(tiny_dataset), "--out", str(tmp_path / "run"), "--weights", str(tmp_path / "w.h5")]) == 2
    assert "does not exist" in _error(capsys)


def test_weights_file_that_does_not_fit(tiny_dataset, tmp_path, capsys):
    weights = tmp_path / "garbage.weights.h5"
    weights.write_bytes(b"\x89HDF\r\n\x1a\n" + b"0" * 100)
    code = main(["train", "--data", str(tiny_dataset), "--out", str(tmp_path / "run"), "--models", "mobilenetv2",
                 "--image-size", "32", "--epochs", "1", "--weights", str(weights)])  # fmt: skip
    assert code == 2
    assert "do not fit mobilenetv2" in _error(capsys)


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


def test_console_entry_point_help():
    out = subprocess.run([sys.executable, "-m", "training", "--help"], capture_output=True, text=True, check=True).stdout
    for command in ("train", "evaluate", "export"):
        assert command in out
