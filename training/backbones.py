"""The four keras.applications backbones, built flat with their own preprocessing inside the model.

Every model takes raw RGB 0..255 float32 (N, H, W, 3) and returns P(pneumonia) (N, 1):
    image -> [backbone's own scaling layer] -> backbone layers (flat, no nested Model) -> GAP -> dropout
          -> Dense(1) "logit" -> sigmoid "probability"
Flat graphs let Grad-CAM reach the last convolutional block by layer name, and preprocessing inside the
model means ONNX, Keras and the service can never disagree about scaling.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import keras
from keras import layers

from training.errors import TrainingError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LOGIT_LAYER = "logit"
PROBABILITY_LAYER = "probability"


class WeightsError(TrainingError):
    """A weights file that does not exist or does not fit the requested backbone."""


def _scale_minus_one_to_one() -> layers.Layer:
    return layers.Rescaling(scale=1.0 / 127.5, offset=-1.0, name="preprocess_tf")


def _torch_normalisation() -> layers.Layer:
    # (x/255 - mean) / std per channel, as keras.applications.densenet.preprocess_input does.
    return layers.Rescaling(
        scale=[1.0 / (255.0 * s) for s in IMAGENET_STD],
        offset=[-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD, strict=True)],
        name="preprocess_torch",
    )


def _caffe() -> layers.Layer:
    # keras.applications.resnet50.preprocess_input flips RGB->BGR and subtracts the BGR ImageNet means.
    # `pneumonia.imaging` always feeds grayscale replicated to three equal channels, for which the flip is a
    # no-op, so subtracting the means in BGR order is exactly equivalent and needs no custom layer.
    return layers.Rescaling(scale=1.0, offset=[-103.939, -116.779, -123.68], name="preprocess_caffe")


@dataclass(frozen=True)
class Backbone:
    name: str
    application: Callable[..., keras.Model]
    preprocessing: Callable[[], layers.Layer] | None  # None: the application rescales internally
    gradcam_layer: str  # output of the last convolutional block


BACKBONES: dict[str, Backbone] = {
    b.name: b
    for b in (
        Backbone("densenet121", keras.applications.DenseNet121, _torch_normalisation, "relu"),
        Backbone("resnet50", keras.applications.ResNet50, _caffe, "conv5_block3_out"),
        Backbone("efficientnetb0", keras.applications.EfficientNetB0, None, "top_activation"),
        Backbone("mobilenetv2", keras.applications.MobileNetV2, _scale_minus_one_to_one, "out_relu"),
    )
}


def resolve(names: list[str]) -> list[Backbone]:
    """Backbones by name; `TrainConfig` has already validated the names against `BACKBONE_NAMES`."""
    return [BACKBONES[n] for n in names]


def build_classifier(
    backbone: Backbone, image_size: int, *, weights: str | None, dropout: float = 0.3, bn_momentum: float | None = None
) -> keras.Model:
    """Build the flat classifier. `weights`: None, "imagenet" (Keras download) or a local weights file."""
    inputs = keras.Input((image_size, image_size, 3), name="image")  # raw RGB 0..255
    x = backbone.preprocessing()(inputs) if backbone.preprocessing else inputs
    base = backbone.application(include_top=False, weights=None, input_tensor=x)
    features = layers.GlobalAveragePooling2D(name="avg_pool_head")(base.output)  # (N, C)
    features = layers.Dropout(dropout, name="dropout_head")(features)
    logit = layers.Dense(1, name=LOGIT_LAYER)(features)  # (N, 1), before the sigmoid: Grad-CAM target
    probability = layers.Activation("sigmoid", name=PROBABILITY_LAYER, dtype="float32")(logit)
    model = keras.Model(inputs, probability, name=f"{backbone.name}_{image_size}")
    if weights is not None:
        load_backbone_weights(model, backbone, image_size, weights)
    if bn_momentum is not None:
        set_batchnorm_momentum(model, bn_momentum)
    return model


def load_backbone_weights(model: keras.Model, backbone: Backbone, image_size: int, weights: str) -> None:
    """Copy ImageNet (or local-file) backbone weights into the flat model, layer by layer by name.

    keras.applications loads `weights` into a standalone backbone ("imagenet" downloads; a path is read
    locally, e.g. the `..._notop.h5` file Keras would download), and we copy from it. A file that does not
    fit the architecture raises `WeightsError`.
    """
    if weights != "imagenet" and not Path(weights).is_file():
        raise WeightsError(f"weights file {weights} does not exist")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            reference = backbone.application(
                include_top=False, weights=weights, input_shape=(image_size, image_size, 3)
            )
    except (ValueError, KeyError, OSError, TypeError) as exc:
        raise WeightsError(f"weights {weights} do not fit {backbone.name}: {exc}") from exc
    # Keras 3 loads a .weights.h5 of another architecture with only a warning, leaving layers random.
    partial = [
        str(w.message) for w in caught if "freshly-initialized" in str(w.message) or "Skipping" in str(w.message)
    ]
    if partial:
        raise WeightsError(f"weights {weights} do not fit {backbone.name}: {partial[0][:200]}")
    copied = 0
    for layer in reference.layers:
        values = layer.get_weights()
        if not values:
            continue
        try:
            model.get_layer(layer.name).set_weights(values)
        except (ValueError, KeyError) as exc:
            raise WeightsError(f"weights {weights} do not fit {backbone.name} at layer {layer.name}: {exc}") from exc
        copied += 1
    if copied == 0:
        raise WeightsError(f"weights {weights} held no weights for {backbone.name}")


def set_batchnorm_momentum(model: keras.Model, momentum: float) -> None:
    """Lower BatchNorm momentum when training from scratch.

    With Keras' defaults (0.99-0.999) the moving statistics lag far behind fast-changing weights, and a
    from-scratch model can score validation AUC 0.5 while training AUC is 0.93. 0.9 tracks them in an epoch.
    """
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            layer.momentum = momentum


def freeze_backbone(model: keras.Model, *, trainable_top_layers: int = 0) -> None:
    """Freeze everything below the head, then unfreeze the top `trainable_top_layers` backbone layers.

    BatchNormalization layers stay frozen (inference mode) throughout fine-tuning: small-batch updates
    would wreck the ImageNet statistics (the keras-io transfer-learning guide's advice).
    """
    head = {LOGIT_LAYER, PROBABILITY_LAYER, "avg_pool_head", "dropout_head"}
    body = [layer for layer in model.layers if layer.name not in head]
    for index, layer in enumerate(body):
        in_top = trainable_top_layers > 0 and index >= len(body) - trainable_top_layers
        layer.trainable = in_top and not isinstance(layer, layers.BatchNormalization)
