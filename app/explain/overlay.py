"""Grad-CAM as small composable pieces (in the spirit of pytorch-grad-cam), free of any web framework.

    cam = GradCam(keras_model, target_layer="out_relu", logit_layer="logit")   # build once per model
    maps = cam.heatmap(batch)                      # (N, h, w) float32 in [0, 1]
    rgb = overlay(gray_uint8, maps[0])             # (H, W, 3) uint8 at the image's own size
    png = encode_png(rgb)

The gradient is taken of the LOGIT (before the sigmoid), so a saturated probability does not flatten the
map. TensorFlow is imported only when a `GradCam` is built, so `overlay`/`encode_png` stay light.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image


class GradCam:
    def __init__(self, model: Any, target_layer: str, logit_layer: str):
        import keras
        import tensorflow as tf

        try:
            target = model.get_layer(target_layer)
            logit = model.get_layer(logit_layer)
        except ValueError as exc:
            raise ValueError(f"Grad-CAM layer not found in {model.name}: {exc}") from exc
        self.target_layer = target_layer
        self.logit_layer = logit_layer
        self.input_shape = tuple(int(d) for d in model.inputs[0].shape[1:])
        self._model = keras.Model(model.inputs, [target.output, logit.output], name=f"{model.name}_gradcam")
        grad_model = self._model

        def step(images):
            with tf.GradientTape() as tape:
                activations, logits = grad_model(images, training=False)
                score = tf.reduce_sum(logits)
            grads = tape.gradient(score, activations)  # (N, h, w, C)
            weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)  # (N, 1, 1, C)
            cam = tf.nn.relu(tf.reduce_sum(weights * activations, axis=-1))  # (N, h, w)
            peak = tf.reduce_max(cam, axis=(1, 2), keepdims=True)
            return tf.math.divide_no_nan(cam, peak), tf.reshape(logits, (-1,))

        signature = (tf.TensorSpec((None, *self.input_shape), tf.float32, name="images"),)
        self._step = tf.function(step, input_signature=signature, reduce_retracing=True)

    @property
    def tracing_count(self) -> int:
        return int(self._step.experimental_get_tracing_count())

    def heatmap_and_logits(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        batch = np.asarray(batch, dtype=np.float32)
        if batch.ndim != 4 or batch.shape[1:] != self.input_shape:
            raise ValueError(f"expected a batch of shape (N, {', '.join(map(str, self.input_shape))}), got {batch.shape}")
        maps, logits = self._step(batch)
        return np.asarray(maps, dtype=np.float32), np.asarray(logits, dtype=np.float64)

    def heatmap(self, batch: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) float32 model input -> (N, h, w) float32 Grad-CAM maps in [0, 1]."""
        return self.heatmap_and_logits(batch)[0]


def _jet_lut() -> np.ndarray:
    """A 256-entry 'jet'-like colormap (blue -> cyan -> yellow -> red) as uint8 (256, 3)."""
    x = np.linspace(0.0, 1.0, 256)
    red = np.clip(1.5 - np.abs(4.0 * x - 3.0), 0.0, 1.0)
    green = np.clip(1.5 - np.abs(4.0 * x - 2.0), 0.0, 1.0)
    blue = np.clip(1.5 - np.abs(4.0 * x - 1.0), 0.0, 1.0)
    return np.round(np.stack([red, green, blue], axis=1) * 255.0).astype(np.uint8)


JET = _jet_lut()


def colorize(heatmap: np.ndarray) -> np.ndarray:
    """(H, W) float in [0, 1] -> (H, W, 3) uint8 via the jet LUT."""
    return JET[np.clip(np.round(heatmap * 255.0), 0, 255).astype(np.uint8)]


def overlay(gray: np.ndarray, heatmap: np.ndarray, alpha: float = 0.4) -> np.ndarray:
    """Blend a colour-mapped heatmap over a grayscale image, at the image's size.

    gray: (H, W) uint8; heatmap: (h, w) float in [0, 1] (resized bilinearly to (H, W)); alpha: heatmap weight.
    Returns (H, W, 3) uint8 RGB. Invalid inputs raise ValueError.
    """
    gray = np.asarray(gray)
    heatmap = np.asarray(heatmap)
    if gray.dtype != np.uint8 or gray.ndim != 2 or gray.size == 0:
        raise ValueError(f"gray must be a non-empty 2-D uint8 array, got {gray.dtype} {gray.shape}")
    if heatmap.ndim != 2 or heatmap.size == 0 or not np.issubdtype(heatmap.dtype, np.floating):
        raise ValueError(f"heatmap must be a non-empty 2-D float array, got {heatmap.dtype} {heatmap.shape}")
    if not np.all(np.isfinite(heatmap)):
        raise ValueError("heatmap contains NaN or infinite values")
    if float(heatmap.min()) < 0.0 or float(heatmap.max()) > 1.0:
        raise ValueError(f"heatmap values must lie in [0, 1], got [{heatmap.min():g}, {heatmap.max():g}]")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    height, width = gray.shape
    resized = Image.fromarray(heatmap.astype(np.float32)).resize((width, height), Image.Resampling.BILINEAR)
    colours = colorize(np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)).astype(np.float32)
    base = np.repeat(gray[:, :, None], 3, axis=2).astype(np.float32)
    return np.round((1.0 - alpha) * base + alpha * colours).clip(0, 255).astype(np.uint8)


def encode_png(rgb: np.ndarray) -> bytes:
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected (H, W, 3) uint8 RGB, got {rgb.dtype} {rgb.shape}")
    buffer = io.BytesIO()
    # zlib level 1, not Pillow's default 6: encoding the overlay was the largest single cost of /explain
    # (more than the Grad-CAM pass itself; py-spy, bench/). Level 1 is ~5x faster for a PNG ~10-30% larger.
    Image.fromarray(rgb).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()
