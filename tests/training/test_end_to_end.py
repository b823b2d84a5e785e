"""The tiny end-to-end run: train two backbones -> evaluate -> export -> a bundle the service can load."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from pneumonia.bundle import (
    KERAS_FILENAME,
    MODEL_CARD_FILENAME,
    ONNX_FILENAME,
    PARITY_TOLERANCE,
    RESEARCH_DISCLAIMER,
    read_metadata,
    verify_file,
)
from pneumonia.imaging import decode_image, to_model_input
from training import layout, provenance
from training.cli import main
from training.config import TrainConfig


def test_run_records_config_split_and_models(tiny_run):
    config = json.loads((tiny_run / "config.json").read_text())
    assert config["image_size"] == 32 and config["weights"] == "none"
    with (tiny_run / "split.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    train_patients = {r["patient"] for r in rows if r["subset"] == "train"}
    val_patients = {r["patient"] for r in rows if r["subset"] == "val"}
    assert train_patients and val_patients and not train_patients & val_patients
    for backbone in ("mobilenetv2", "efficientnetb0"):
        model_dir = tiny_run / "models" / backbone
        for name in (
            "best.keras",
            "history.csv",
            "evaluation.json",
            "confusion.png",
            "roc_pr.png",
            "reliability.png",
            "training_curves.png",
        ):
            assert (model_dir / name).is_file(), f"{backbone}/{name} missing"


def test_recorded_split_follows_a_moved_dataset(tiny_run, tiny_dataset, tmp_path):
    """split.csv holds paths relative to the dataset root, so a published split is reusable elsewhere."""
    from training.layout import read_run_split

    with (tiny_run / "split.csv").open() as handle:
        recorded = [row["path"] for row in csv.DictReader(handle)]
    assert recorded and not any(Path(p).is_absolute() or ".." in Path(p).parts for p in recorded)
    moved = shutil.copytree(tiny_dataset, tmp_path / "elsewhere")
    subsets = read_run_split(tiny_run, moved)
    paths = [s.path for samples in subsets.values() for s in samples]
    assert len(paths) == len(recorded) and all(p.is_file() and p.is_relative_to(moved) for p in paths)
    assert {s.path for s in read_run_split(tiny_run)["val"]} == {
        tiny_dataset / s.path.relative_to(moved) for s in subsets["val"]
    }


def test_comparison_ranks_by_validation_auc(tiny_run):
    comparison = json.loads((tiny_run / "comparison.json").read_text())
    assert comparison["selection"] == "validation ROC-AUC"
    assert {row["backbone"] for row in comparison["rows"]} == {"mobilenetv2", "efficientnetb0"}
    aucs = [float(row["val_roc_auc"].split()[0]) for row in comparison["rows"]]
    assert aucs == sorted(aucs, reverse=True) and comparison["best"] == comparison["rows"][0]["backbone"]
    assert "| Backbone |" in (tiny_run / "comparison.md").read_text()
    assert (tiny_run / "comparison.csv").read_text().startswith("backbone,")
    assert (tiny_run / f"gradcam_grid_{comparison['best']}.png").stat().st_size > 0


def test_operating_points_come_from_validation_only(tiny_run):
    evaluation = json.loads((tiny_run / "models" / "mobilenetv2" / "evaluation.json").read_text())
    assert {p["name"] for p in evaluation["operating_points"]} >= {"youden", "max_f1", "sensitivity_95"}
    assert evaluation["validation"]["split"] == "validation"
    assert "test" not in evaluation  # the tiny dataset has no test/ folder


def test_bundle_is_complete_and_checksummed(tiny_bundle):
    metadata = read_metadata(tiny_bundle)
    verify_file(tiny_bundle, ONNX_FILENAME, metadata.checksums.onnx_sha256)
    verify_file(tiny_bundle, KERAS_FILENAME, metadata.checksums.keras_sha256)
    assert metadata.input_size == (32, 32)
    assert metadata.disclaimer == RESEARCH_DISCLAIMER
    card = (tiny_bundle / MODEL_CARD_FILENAME).read_text()
    assert RESEARCH_DISCLAIMER in card and "Trained from scratch" in card


def test_bundle_onnx_matches_keras_on_sample_images(tiny_bundle, sample_images):
    import keras

    metadata = read_metadata(tiny_bundle)
    batch = np.stack(
        [
            to_model_input(decode_image(p.read_bytes()), metadata.input_size)
            for paths in sample_images.values()
            for p in paths
        ]
    )
    session = ort.InferenceSession(str(tiny_bundle / ONNX_FILENAME), providers=["CPUExecutionProvider"])
    onnx_p = session.run(None, {metadata.onnx_input_name: batch})[0].reshape(-1)
    keras_p = np.asarray(keras.models.load_model(tiny_bundle / KERAS_FILENAME)(batch)).reshape(-1)
    np.testing.assert_allclose(onnx_p, keras_p, atol=PARITY_TOLERANCE)


def test_export_of_unevaluated_run_fails_cleanly(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    assert main(["export", "--run", str(tmp_path / "run"), "--out", str(tmp_path / "bundle")]) == 2
    assert "run `python -m training evaluate" in capsys.readouterr().err
    assert not (tmp_path / "bundle").exists()


def test_export_refuses_unknown_operating_point_and_keeps_old_bundle(tiny_run, tiny_bundle, tmp_path, capsys):
    bundle = shutil.copytree(tiny_bundle, tmp_path / "bundle")  # the session's tiny_bundle stays untouched
    before = {p.name: p.read_bytes() for p in bundle.iterdir()}
    code = main(["export", "--run", str(tiny_run), "--out", str(bundle), "--operating-point", "nonsense", "--force"])
    assert code == 2 and "unknown operating point" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in bundle.iterdir()} == before


def test_export_refuses_a_drifting_conversion_and_keeps_old_bundle(
    tiny_run, tiny_bundle, tmp_path, monkeypatch, capsys
):
    """An ONNX graph that answers differently from the Keras model must never replace a working bundle."""
    import keras

    from training import export, onnx_export
    from training.backbones import LOGIT_LAYER

    convert = onnx_export.convert_to_onnx

    def convert_a_shifted_model(model, image_size, path):  # a conversion fault: the logit moved by +1
        drifted = keras.models.clone_model(model)
        drifted.set_weights(model.get_weights())
        kernel, bias = drifted.get_layer(LOGIT_LAYER).get_weights()
        drifted.get_layer(LOGIT_LAYER).set_weights([kernel, bias + 1.0])
        return convert(drifted, image_size, path)

    monkeypatch.setattr(export, "convert_to_onnx", convert_a_shifted_model)
    bundle = shutil.copytree(tiny_bundle, tmp_path / "bundle")
    before = {p.name: p.read_bytes() for p in bundle.iterdir()}
    assert main(["export", "--run", str(tiny_run), "--out", str(bundle), "--force"]) == 2
    error = capsys.readouterr().err
    assert "ONNX and Keras disagree" in error and "--parity-tolerance" in error
    assert {p.name: p.read_bytes() for p in bundle.iterdir()} == before
    assert not bundle.with_name(bundle.name + ".partial").exists()


def test_export_with_another_default_point(tiny_run, tmp_path):
    point = "youden"
    bundle = tmp_path / "bundle"
    code = main(
        [
            "export",
            "--run",
            str(tiny_run),
            "--out",
            str(bundle),
            "--model",
            "efficientnetb0",
            "--operating-point",
            point,
            "--force",
        ]
    )
    assert code == 0
    metadata = read_metadata(bundle)
    assert metadata.backbone == "efficientnetb0" and metadata.default_operating_point == point
    assert metadata.validation.threshold == pytest.approx(metadata.operating_point(point).threshold)


def test_publish_copies_evidence_but_no_checkpoints(tiny_run, tmp_path):
    out = tmp_path / "results"
    assert main(["publish", "--run", str(tiny_run), "--out", str(out)]) == 0
    names = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert {
        "config.json",
        "split.csv",
        "comparison.md",
        "models/mobilenetv2/evaluation.json",
        "models/mobilenetv2/roc_pr.png",
    } <= names
    assert not any(n.endswith((".keras", ".npz")) for n in names)


def test_a_test_split_is_reported_but_changes_no_choice(tiny_run, tiny_dataset, tmp_path):
    """Invariant: no threshold, calibration or model choice reads the test split."""
    run = shutil.copytree(tiny_run, tmp_path / "run")
    data = shutil.copytree(tiny_dataset, tmp_path / "data")
    for label, other in (("NORMAL", "PNEUMONIA"), ("PNEUMONIA", "NORMAL")):  # deliberately mislabelled
        (data / "test" / label).mkdir(parents=True)
        for path in sorted((tiny_dataset / "train" / other).glob("*.jpeg"))[:6]:
            shutil.copy(path, data / "test" / label / path.name)
    before = {
        name: json.loads((run / "models" / name / "evaluation.json").read_text())
        for name in ("mobilenetv2", "efficientnetb0")
    }

    assert main(["evaluate", "--run", str(run), "--data", str(data)]) == 0
    for name, old in before.items():
        new = json.loads((run / "models" / name / "evaluation.json").read_text())
        assert new["operating_points"] == old["operating_points"]
        assert new["calibration"] == old["calibration"]
        assert new["test"]["n_images"] == 12
        assert new["test"]["threshold"] == old["validation"]["threshold"]
    assert (
        json.loads((run / "comparison.json").read_text())["best"]
        == json.loads((tiny_run / "comparison.json").read_text())["best"]
    )


def test_bundle_embeds_the_whole_training_config(tiny_run, tiny_bundle):
    config = layout.read_config(tiny_run)
    trained = read_metadata(tiny_bundle).training
    assert set(TrainConfig.model_fields) <= set(trained)
    assert {name: trained[name] for name in TrainConfig.model_fields} == config.model_dump(mode="json")
    parity, tolerance = trained["parity_max_abs_diff"], trained["parity_tolerance"]
    assert isinstance(parity, float) and isinstance(tolerance, float)
    assert trained["epochs_run"] == 1 and parity <= tolerance


def test_bundle_data_provenance_comes_from_the_run(tiny_run, tiny_bundle, tiny_dataset):
    """The tiny dataset has no card: the bundle says so instead of naming a dataset it was not trained on."""
    metadata = read_metadata(tiny_bundle)
    recorded = layout.read_data_summary(tiny_run)["provenance"]
    assert metadata.data.content_sha256 == recorded["content_sha256"] == provenance.content_sha256(tiny_dataset)[0]
    assert metadata.data.files == 48 and metadata.data.card is None
    assert metadata.data.dataset == tiny_dataset.name and metadata.data.licence.startswith("unknown")
    text = (tiny_bundle / "metadata.json").read_text() + (tiny_bundle / MODEL_CARD_FILENAME).read_text()
    assert "Kermany" not in text and "Guangzhou" not in text
