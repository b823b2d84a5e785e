"""The four backbones: flat graphs, preprocessing inside, Grad-CAM layers, local weights files."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from pydantic import ValidationError

from training.backbones import (
    BACKBONES,
    LOGIT_LAYER,
    WeightsError,
    build_classifier,
    freeze_backbone,
    resolve,
    set_batchnorm_momentum,
)
from training.config import BACKBONE_NAMES, TrainConfig

pytestmark = pytest.mark.tensorflow  # builds the backbones' Keras graphs


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_backbone_is_flat_takes_raw_pixels_and_exposes_gradcam_layer(name):
    backbone = BACKBONES[name]
    model = build_classifier(backbone, 32, weights=None)
    assert not any(isinstance(layer, keras.Model) for layer in model.layers), (
        "nested model: Grad-CAM cannot reach inside"
    )
    assert not any(type(layer).__name__ == "Lambda" for layer in model.layers)
    assert len(model.get_layer(backbone.gradcam_layer).output.shape) == 4  # a convolutional feature map
    assert model.get_layer(LOGIT_LAYER).output.shape[-1] == 1
    batch = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    p = np.asarray(model(batch, training=False))
    assert p.shape == (2, 1) and np.all((p >= 0) & (p <= 1))


def test_configured_names_resolve_to_backbones():
    config = TrainConfig(models="MobileNetV2, resnet50")
    assert [b.name for b in resolve(config.models)] == ["mobilenetv2", "resnet50"]
    assert tuple(BACKBONES) == BACKBONE_NAMES
    with pytest.raises(ValidationError, match="unknown backbone"):
        TrainConfig(models="vgg16")


def test_local_weights_file_is_loaded_into_the_flat_model(tmp_path):
    backbone = BACKBONES["mobilenetv2"]
    reference = backbone.application(include_top=False, weights=None, input_shape=(32, 32, 3))
    path = tmp_path / "mobilenetv2_notop.weights.h5"
    reference.save_weights(path)
    model = build_classifier(backbone, 32, weights=str(path))
    for layer_name in ("Conv1", "block_16_project", "Conv_1_bn"):
        for loaded, expected in zip(
            model.get_layer(layer_name).get_weights(), reference.get_layer(layer_name).get_weights(), strict=True
        ):
            np.testing.assert_array_equal(loaded, expected)


def test_weights_file_of_another_backbone_is_refused(tmp_path):
    other = BACKBONES["efficientnetb0"].application(include_top=False, weights=None, input_shape=(32, 32, 3))
    path = tmp_path / "efficientnet.weights.h5"
    other.save_weights(path)
    with pytest.raises(WeightsError, match="do not fit mobilenetv2"):
        build_classifier(BACKBONES["mobilenetv2"], 32, weights=str(path))


def test_missing_weights_file_is_refused(tmp_path):
    with pytest.raises(WeightsError, match="does not exist"):
        build_classifier(BACKBONES["mobilenetv2"], 32, weights=str(tmp_path / "nope.h5"))


def test_fine_tuning_freezes_base_and_keeps_batchnorm_in_inference_mode():
    model = build_classifier(BACKBONES["mobilenetv2"], 32, weights=None)
    freeze_backbone(model, trainable_top_layers=10)
    assert model.get_layer(LOGIT_LAYER).trainable
    assert not model.get_layer("Conv1").trainable
    assert not any(layer.trainable for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization))
    assert any(layer.trainable and layer.weights for layer in model.layers[-15:-4])


def test_batchnorm_momentum_is_lowered_for_from_scratch_training():
    model = build_classifier(BACKBONES["mobilenetv2"], 32, weights=None, bn_momentum=0.9)
    momenta = {layer.momentum for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)}
    assert momenta == {0.9}
    set_batchnorm_momentum(model, 0.8)
    assert {layer.momentum for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)} == {0.8}
