"""The bundle the service ships by default (models/default): it loads, self-tests and labels the samples."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.bundle import RESEARCH_DISCLAIMER, read_metadata
from app.config import Settings
from app.imaging import decode_image
from app.service import load_service
from training.config import load_config

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "models" / "default"
CONFIGS = sorted((REPO / "training" / "configs").glob("*.toml"))


@pytest.fixture(scope="module")
def shipped_service():
    return load_service(Settings(model_dir=SHIPPED))


def test_shipped_bundle_metadata_is_valid_and_honest():
    metadata = read_metadata(SHIPPED)
    assert metadata.disclaimer == RESEARCH_DISCLAIMER
    assert metadata.validation.split == "validation"
    assert any("not validated" in item.lower() or "not externally validated" in item.lower() for item in metadata.limitations)
    assert metadata.default_operating_point in {p.name for p in metadata.operating_points}


def test_shipped_bundle_self_tests_with_explanations(shipped_service):
    assert shipped_service.explain_available


def test_shipped_bundle_labels_the_committed_samples_as_their_folders_say(shipped_service, sample_images):
    threshold = shipped_service.metadata.operating_point().threshold
    for label, paths in sample_images.items():
        for path in paths:
            probability = shipped_service.predict_image(decode_image(path.read_bytes()))
            predicted = "PNEUMONIA" if probability >= threshold else "NORMAL"
            assert predicted == label, f"{path.name}: p={probability:.3f}, threshold {threshold:.3f}"


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_committed_training_configs_are_valid(path):
    load_config(path, {})


def test_the_readme_recipe_is_the_one_that_trained_the_shipped_bundle():
    """training/configs/final.toml is what the README says reproduces models/default."""
    config = load_config(REPO / "training" / "configs" / "final.toml", {})
    metadata = read_metadata(SHIPPED)
    assert config.models == [metadata.backbone] and config.default_operating_point == metadata.default_operating_point
    trained = metadata.training
    assert (trained["image_size"], trained["augment_strength"], trained["seed"], trained["batch_size"]) == (
        config.image_size,
        config.augment_strength,
        config.seed,
        config.batch_size,
    )
