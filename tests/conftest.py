"""Shared fixtures: committed sample X-rays, a tiny generated dataset, a tiny training run and its bundle.

The tiny bundle is built by the real training package (train -> evaluate -> export), so every service
test exercises a bundle exactly as training writes it; no test depends on the shipped bundle except the
smoke test that is about it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLES_DIR = REPO_ROOT / "tests" / "data" / "samples"
SHARED_DATA = REPO_ROOT.parent / "shared" / "data" / "chest_xray"
TINY_IMAGE_SIZE = 32
TINY_MODELS = "mobilenetv2,efficientnetb0"
IMAGES_PER_CLASS = 24

# Fixtures that train or load a model (TensorFlow), start a server or drive a browser: a test that requests none
# of them, directly or through other fixtures, is marked `fast` (`pytest -m fast`), unless it is marked
# `tensorflow` (it builds or trains a Keras model in its own body, which no fixture shows), `slow` or `container`.
SLOW_FIXTURES = frozenset(
    {"tiny_dataset", "tiny_run", "tiny_bundle"}  # the tiny training run
    | {"loaded_service", "make_app", "shipped_service", "shipped_model"}  # a model loaded with its Keras half
    | {"start_server", "server", "orthanc"}  # uvicorn and Orthanc subprocesses
    | {"page", "browser"}  # Chromium
)
NOT_FAST_MARKERS = ("tensorflow", "slow", "container")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if any(item.get_closest_marker(name) for name in NOT_FAST_MARKERS):
            continue
        if SLOW_FIXTURES.isdisjoint(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.fast)


@pytest.fixture(scope="session")
def sample_images() -> dict[str, list[Path]]:
    """The committed, attributed sample X-rays by class folder."""
    samples = {label: sorted((SAMPLES_DIR / label).glob("*.jpeg")) for label in ("NORMAL", "PNEUMONIA")}
    assert all(samples.values()), f"sample images missing under {SAMPLES_DIR}"
    return samples


def _variant(path: Path, index: int, rng: np.random.Generator) -> Image.Image:
    """A plausible variation of a sample X-ray: crop, blur and noise, so the tiny set has no duplicates."""
    image = Image.open(path).convert("L")
    width, height = image.size
    margin = int(rng.integers(0, 20))
    image = image.crop((margin, margin, width - margin, height - margin)).resize((96, 96))
    if index % 3 == 1:
        image = image.filter(ImageFilter.GaussianBlur(1))
    pixels = np.asarray(image, dtype=np.float32) + rng.normal(0, 4, (96, 96))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def make_tiny_dataset(root: Path, per_class: int = IMAGES_PER_CLASS, seed: int = 0) -> Path:
    """train/{NORMAL,PNEUMONIA} with Kermany-style names (one image per patient, a few with two)."""
    rng = np.random.default_rng(seed)
    samples = {label: sorted((SAMPLES_DIR / label).glob("*.jpeg")) for label in ("NORMAL", "PNEUMONIA")}
    for label, sources in samples.items():
        folder = root / "train" / label
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            patient = i // 2 if i < 8 else i  # patients 0-3 have two images each
            name = f"IM-{patient:04d}-{i:04d}.jpeg" if label == "NORMAL" else f"person{patient}_bacteria_{i}.jpeg"
            _variant(sources[i % len(sources)], i, rng).save(folder / name, quality=92)
    return root


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    return make_tiny_dataset(tmp_path_factory.mktemp("tiny_dataset"))


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_dataset) -> Path:
    """A real end-to-end training run: two backbones, one epoch, 32 px, from scratch, then evaluate."""
    from training.cli import main

    run_dir = tmp_path_factory.mktemp("tiny_run") / "run"
    config = run_dir.parent / "tiny.json"
    config.write_text(json.dumps({"bootstrap_samples": 50, "val_fraction": 0.25, "decode_workers": 2}))
    code = main(
        [
            "train", "--data", str(tiny_dataset), "--out", str(run_dir), "--models", TINY_MODELS,
            "--image-size", str(TINY_IMAGE_SIZE), "--epochs", "1", "--batch-size", "8", "--weights", "none",
            "--config", str(config),
        ]
    )  # fmt: skip
    assert code == 0
    return run_dir


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory, tiny_run) -> Path:
    """The bundle `python -m training export` writes for the tiny run (best backbone by validation AUC).

    --force: one epoch on 36 images is near chance by design, which `export` refuses without it."""
    from training.cli import main

    bundle = tmp_path_factory.mktemp("tiny_bundle") / "bundle"
    assert main(["export", "--run", str(tiny_run), "--out", str(bundle), "--force"]) == 0
    return bundle
