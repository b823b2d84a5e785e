"""The served model: the Keras model as the service runs it, converted to ONNX and checked against Keras.

`export`, `input-check`, `adapt` and `calibrate` all write model.onnx this way: the served form (probability, the
input check's statistics and the explanation activation in one graph), tf2onnx at a fixed opset, then a parity check
on real images, so an ONNX graph that answers differently from its Keras model never reaches a bundle.
TensorFlow, Keras, tf2onnx and onnxruntime are imported only inside the functions that need them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pneumonia.bundle import EXPLAIN_ACTIVATION_OUTPUT, PARITY_TOLERANCE, ExplainActivation, LogitCalibration
from training import ood
from training.backbones import LOGIT_LAYER
from training.errors import ExportError

ONNX_INPUT_NAME = "image"
ONNX_OPSET = 17
PARITY_IMAGES = 64


@dataclass(frozen=True)
class Conversion:
    """The ONNX graph's tensor names and how closely it agreed with the Keras model."""

    input_name: str
    output_name: str
    parity_max_abs_diff: float
    parity_tolerance: float
    explain_activation: ExplainActivation


def bake_calibration(model, calibration: LogitCalibration):
    """Fold scale * logit + bias into the logit Dense layer: the model then outputs calibrated probabilities."""
    logit = model.get_layer(LOGIT_LAYER)
    kernel, bias = logit.get_weights()
    logit.set_weights([kernel * calibration.scale, bias * calibration.scale + calibration.bias])
    return model


def served_model(model) -> tuple[Any, ExplainActivation]:
    """What model.onnx computes, all in one run: P(pneumonia) (first output), the input check's statistics
    (stats_i) and the activation explanations start from (explain_activation, see pneumonia.explain)."""
    import keras
    from keras import layers

    from pneumonia.explain import activation_layer

    with_statistics = ood.with_statistics(model, ood.statistic_layers(model))
    root = activation_layer(model)
    activation = layers.Identity(name=EXPLAIN_ACTIVATION_OUTPUT)(model.get_layer(root).output)  # (N, h, w, C)
    served = keras.Model(model.input, [*with_statistics.outputs, activation], name=f"{model.name}_served")
    return served, ExplainActivation(output=EXPLAIN_ACTIVATION_OUTPUT, layer=root)


def convert_to_onnx(model, image_size: int, path: Path) -> tuple[str, str]:
    import tensorflow as tf
    import tf2onnx

    signature = (tf.TensorSpec((None, image_size, image_size, 3), tf.float32, name=ONNX_INPUT_NAME),)
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=signature, opset=ONNX_OPSET)
    path.write_bytes(proto.SerializeToString())
    return proto.graph.input[0].name, proto.graph.output[0].name


def parity_check(onnx_path: Path, keras_model, images: np.ndarray, tolerance: float = PARITY_TOLERANCE) -> float:
    """Largest |P_onnx - P_keras| over real images; raises ExportError above `tolerance`."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    batch = images.astype(np.float32)
    onnx_p = session.run(None, {session.get_inputs()[0].name: batch})[0].reshape(-1)
    keras_p = np.asarray(keras_model(batch, training=False)).reshape(-1)
    difference = float(np.max(np.abs(onnx_p - keras_p)))
    if not difference <= tolerance:
        raise ExportError(
            f"ONNX and Keras disagree by {difference:.2e} (> {tolerance:.0e}) on validation images; "
            "check the conversion, or pass --parity-tolerance to accept a larger difference"
        )
    return difference
