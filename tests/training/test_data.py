"""Dataset scanning, patient identity and the patient-level split."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.data import DatasetError, Sample, class_weights, decode_samples, load_splits, patient_id, patient_split


@pytest.mark.parametrize(
    ("filename", "patient"),
    [
        ("person1000_bacteria_2931.jpeg", "PERSON1000"),
        ("person1000_virus_1681.jpeg", "PERSON1000"),
        ("IM-0115-0001.jpeg", "IM-0115"),
        ("NORMAL2-IM-1427-0001.jpeg", "NORMAL2-IM-1427"),
        ("scan.png", "FILE:scan"),
    ],
)
def test_patient_id_from_kermany_file_names(filename, patient):
    assert patient_id(filename) == patient


def _write(path: Path, value: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((40, 40), value, np.uint8)).save(path)
    return path


def _synthetic_samples(tmp_path: Path) -> list[Sample]:
    samples = []
    for p in range(60):  # 60 pneumonia patients, some with two images
        for k in range(1 + p % 2):
            path = _write(tmp_path / "P" / f"person{p}_bacteria_{k}.png", (p * 7 + k) % 250)
            samples.append(Sample(path, 1, patient_id(path.name)))
    for n in range(30):
        path = _write(tmp_path / "N" / f"IM-{n:04d}-0001.png", (n * 11 + 3) % 250)
        samples.append(Sample(path, 0, patient_id(path.name)))
    return samples


def test_patient_split_keeps_patients_on_one_side_and_stratifies(tmp_path):
    samples = _synthetic_samples(tmp_path)
    train, val = patient_split(samples, 0.2, seed=1)
    assert not {s.patient for s in train} & {s.patient for s in val}
    assert len(train) + len(val) == len(samples)
    val_share = Counter(s.label for s in val)
    all_share = Counter(s.label for s in samples)
    for label in (0, 1):
        assert val_share[label] / all_share[label] == pytest.approx(0.2, abs=0.06)


def test_patient_split_is_seeded(tmp_path):
    samples = _synthetic_samples(tmp_path)
    assert patient_split(samples, 0.2, seed=3) == patient_split(samples, 0.2, seed=3)
    assert patient_split(samples, 0.2, seed=3)[1] != patient_split(samples, 0.2, seed=4)[1]


def test_byte_identical_files_of_different_patients_stay_together(tmp_path):
    samples = _synthetic_samples(tmp_path)
    twin = tmp_path / "P" / "person999_bacteria_0.png"
    twin.write_bytes(samples[0].path.read_bytes())  # same bytes as person0's image
    samples.append(Sample(twin, 1, patient_id(twin.name)))
    for seed in range(5):
        train, val = patient_split(samples, 0.3, seed=seed)
        side = {s.path.name: ("val" if s in val else "train") for s in train + val}
        assert side[twin.name] == side[samples[0].path.name]


def test_missing_dataset_and_class_folders_are_clear_errors(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_splits(tmp_path / "nope", val_fraction=0.2, seed=0)
    (tmp_path / "train" / "normal").mkdir(parents=True)
    with pytest.raises(DatasetError, match="PNEUMONIA missing"):
        load_splits(tmp_path, val_fraction=0.2, seed=0)
    (tmp_path / "train" / "Pneumonia").mkdir()
    with pytest.raises(DatasetError, match="no images"):
        load_splits(tmp_path, val_fraction=0.2, seed=0)


def test_class_folders_are_case_insensitive_and_small_val_is_replaced(tmp_path):
    for p in range(20):
        _write(tmp_path / "Train" / "pneumonia" / f"person{p}_virus_{p}.png", p)
        _write(tmp_path / "Train" / "Normal" / f"IM-{p:04d}-0001.png", p + 100)
    _write(tmp_path / "val" / "NORMAL" / "IM-9999-0001.png", 1)
    _write(tmp_path / "val" / "PNEUMONIA" / "person9999_virus_1.png", 2)
    splits = load_splits(tmp_path, val_fraction=0.25, seed=0)
    assert "stratified by patient" in splits.split_method
    assert len(splits.train) + len(splits.val) == 42  # the 2-image val/ joined the pool


def test_unreadable_images_are_skipped_and_counted(tmp_path):
    good = _write(tmp_path / "a.png", 10)
    bad = tmp_path / "b.png"
    bad.write_bytes(b"not an image at all")
    decoded = decode_samples([Sample(good, 0, "A"), Sample(bad, 1, "B")], (32, 32), workers=1)
    assert decoded.images.shape == (1, 32, 32, 3) and decoded.labels.tolist() == [0]
    assert [p for p, _ in decoded.skipped] == [bad]


def test_training_decodes_exactly_as_the_service_does(sample_images, tiny_bundle, monkeypatch):
    """Training's decode against the input the service hands its ONNX session for the same upload."""
    from pneumonia.imaging import decode_image
    from pneumonia.model import Model

    model = Model.load(tiny_bundle, explain=False)
    served: list[np.ndarray] = []
    run = model.classifier.run

    def recording_run(batch):  # the real classifier, with its input recorded
        served.append(np.array(batch))
        return run(batch)

    monkeypatch.setattr(model.classifier, "run", recording_run)
    paths = [p for group in sample_images.values() for p in group]
    for path in paths:  # the request path's own sync step (POST /predict runs it in a worker thread)
        model.assess(decode_image(path.read_bytes()), "off")
    decoded = decode_samples([Sample(p, 0, p.name) for p in paths], model.metadata.input_size, workers=2)
    assert len(served) == len(paths)
    np.testing.assert_array_equal(decoded.images.astype(np.float32), np.concatenate(served))


def test_class_weights_balance_the_loss():
    weights = class_weights(np.array([0] * 25 + [1] * 75))
    assert weights[0] * 25 == pytest.approx(weights[1] * 75)
    with pytest.raises(DatasetError):
        class_weights(np.array([1, 1, 1]))
