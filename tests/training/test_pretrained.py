"""The pretrained route (--weights imagenet|PATH): head on a frozen base, then fine-tuning; resumable by phase."""

from __future__ import annotations

import csv
import json

from training.backbones import BACKBONES
from training.cli import main


def test_local_weights_train_head_then_finetune_and_resume_skips_finished_phases(tiny_dataset, tmp_path):
    weights = tmp_path / "mobilenetv2_notop.weights.h5"
    BACKBONES["mobilenetv2"].application(include_top=False, weights=None, input_shape=(32, 32, 3)).save_weights(weights)
    config = tmp_path / "pretrained.json"
    config.write_text(json.dumps({"head_epochs": 1, "fine_tune_layers": 5, "val_fraction": 0.25, "patience": 5}))
    run = tmp_path / "run"
    args = ["train", "--data", str(tiny_dataset), "--out", str(run), "--models", "mobilenetv2", "--image-size", "32",
            "--epochs", "2", "--batch-size", "8", "--weights", str(weights), "--config", str(config), "--no-evaluate"]  # fmt: skip
    assert main(args) == 0
    model_dir = run / "models" / "mobilenetv2"
    assert (model_dir / "phase_head.done").is_file() and (model_dir / "phase_finetune.done").is_file()
    with (model_dir / "history.csv").open() as handle:
        epochs = [int(row["epoch"]) for row in csv.DictReader(handle)]
    assert epochs == [0, 1]  # one head epoch, then one fine-tuning epoch continuing the count
    assert json.loads((run / "config.json").read_text())["weights"] == str(weights.resolve())

    (model_dir / "done.json").unlink()  # as if interrupted after both phases but before the summary
    assert main(args) == 0
    with (model_dir / "history.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == 2  # no phase was trained again
    assert json.loads((model_dir / "done.json").read_text())["epochs_run"] == 2
