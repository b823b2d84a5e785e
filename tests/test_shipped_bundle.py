"""The bundle the service ships by default (models/default): it loads, self-tests, keeps labelling the committed
samples as it did, and was trained by the committed recipe."""

from __future__ import annotations

import pytest

from app.config import Settings
from app.service import load_service
from pneumonia.bundle import MODEL_CARD_FILENAME, RESEARCH_DISCLAIMER, read_metadata
from tests.support import REPO_ROOT, SHIPPED_BUNDLE
from training.config import load_config
from training.model_card import model_card

CONFIGS = sorted((REPO_ROOT / "training" / "configs").glob("*.toml"))


@pytest.fixture(scope="module")
def shipped_service():
    return load_service(Settings(model_dir=SHIPPED_BUNDLE))


def test_shipped_bundle_metadata_is_valid_and_honest():
    metadata = read_metadata(SHIPPED_BUNDLE)  # the schema itself checks that the default operating point exists
    assert metadata.disclaimer == RESEARCH_DISCLAIMER
    assert metadata.validation.split == "validation"
    assert any(
        "not validated" in item.lower() or "not externally validated" in item.lower() for item in metadata.limitations
    )


def test_the_shipped_card_is_what_the_generator_writes_for_the_shipped_metadata():
    """One home: the card (served at GET /model/card, included in docs/model.md) is the metadata, in words. After a
    change to training/model_card.py, rewrite it with model_card(read_metadata(models/default))."""
    shipped = (SHIPPED_BUNDLE / MODEL_CARD_FILENAME).read_text()
    assert shipped == model_card(read_metadata(SHIPPED_BUNDLE))
    assert shipped.count("Research use only") == 1  # the disclaimer, once
    assert "## Explanations" in shipped


def test_shipped_bundle_self_tests_with_explanations(shipped_service):
    assert shipped_service.explain_available


def test_shipped_bundle_regression_pin_on_the_committed_samples(shipped_service, sample_images):
    """A regression pin, not accuracy evidence: six images that the shipped model labels as their folders say,
    so a broken preprocessing path or a swapped bundle shows up here. Accuracy is in the bundle's metadata."""
    threshold = shipped_service.metadata.operating_point().threshold
    for label, paths in sample_images.items():
        for path in paths:
            prediction = shipped_service.model.predict(path)
            assert prediction.label == label, f"{path.name}: p={prediction.probability:.3f}, threshold {threshold:.3f}"


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_committed_training_configs_are_valid(path):
    load_config(path, {})


def test_the_readme_recipe_is_the_one_that_trained_the_shipped_bundle():
    """training/configs/final.toml is what the README says reproduces models/default: every recipe field the
    bundle recorded (all of them for bundles that embed the whole config) equals the file's."""
    config = load_config(REPO_ROOT / "training" / "configs" / "final.toml", {})
    metadata = read_metadata(SHIPPED_BUNDLE)
    recipe = config.model_dump(mode="json")
    recorded = {name: metadata.training[name] for name in recipe if name in metadata.training}
    assert {"image_size", "augment_strength", "seed", "batch_size", "weights"} <= set(recorded)
    assert recorded == {name: recipe[name] for name in recorded}
    assert config.models == [metadata.backbone] and config.default_operating_point == metadata.default_operating_point
    assert metadata.input_size == (config.image_size, config.image_size)
    assert metadata.data.split_seed == config.seed
