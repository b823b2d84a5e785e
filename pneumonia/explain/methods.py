"""Saliency methods for the binary classifier, one small class each over a shared base (the layout of
pytorch-grad-cam: the base owns the model plumbing, a subclass says only how a layer's activations and
gradients become a map).

Every method maps a batch and the class to explain to raw maps:

    method(batch, signs) -> (N, H, W) float32 in [0, 1] at the MODEL-INPUT resolution

`batch` is the model input (N, H, W, 3) float32 0..255. `signs` is +1 to explain PNEUMONIA (the gradient of
the logit) or -1 to explain NORMAL (the gradient of the negative logit), per image, so a NORMAL prediction
shows the evidence for NORMAL instead of an empty map. Each map is scaled so its maximum is 1 (all zeros
when nothing in the image supports the class). The logit is taken before the sigmoid, so a saturated
probability does not flatten the map; the bundle's Platt calibration is baked into that layer, which only
rescales the gradients by a positive constant and leaves every normalised map unchanged.

TensorFlow is imported when a gradient method is built, never by importing this module.
"""

from __future__ import annotations

import zlib
from typing import Any, ClassVar

import numpy as np
from PIL import Image

PNEUMONIA_SIGN, NORMAL_SIGN = 1.0, -1.0


def class_sign(explained_class: str) -> float:
    if explained_class not in ("PNEUMONIA", "NORMAL"):
        raise ValueError(f"explained_class must be PNEUMONIA or NORMAL, got {explained_class!r}")
    return PNEUMONIA_SIGN if explained_class == "PNEUMONIA" else NORMAL_SIGN


def _check_batch(batch: np.ndarray, input_shape: tuple[int, ...]) -> np.ndarray:
    batch = np.asarray(batch, dtype=np.float32)
    if batch.ndim != 4 or batch.shape[1:] != input_shape:
        raise ValueError(f"expected a batch of shape (N, {', '.join(map(str, input_shape))}), got {batch.shape}")
    return batch


def _signs(signs: Any, n: int) -> np.ndarray:
    signs = np.broadcast_to(np.asarray(signs, dtype=np.float32), (n,)).copy()
    if not np.all(np.isin(signs, (PNEUMONIA_SIGN, NORMAL_SIGN))):
        raise ValueError("signs must be +1 (PNEUMONIA) or -1 (NORMAL)")
    return signs


class SaliencyMethod:
    """A map per image. `layers` names the model layers the map is read from (empty for baselines);
    `native_size` is the (h, w) the method computes at before resizing to the model input."""

    name: ClassVar[str]
    layers: tuple[str, ...] = ()
    native_size: tuple[int, int]
    input_shape: tuple[int, int, int]

    def __call__(self, batch: np.ndarray, signs: Any = PNEUMONIA_SIGN) -> np.ndarray:
        raise NotImplementedError


class GradientCam(SaliencyMethod):
    """Base of the gradient CAMs: activations and gradients of one or more layers w.r.t. the signed logit.

    A subclass implements `layer_map(activations, gradients) -> (N, h, w)` (non-negative, TensorFlow ops).
    With several layers (LayerCAM-style fusion), each layer's map is scaled to [0, 1], resized to the input
    and the maps are averaged, then scaled to [0, 1] again, as pytorch-grad-cam aggregates target layers.
    """

    def __init__(self, model: Any, layers: str | tuple[str, ...], logit_layer: str, root: str | None = None):
        """`root`: a layer at or before every one of `layers` whose activation the caller can supply (model.onnx
        outputs it); `maps_from_activation` then runs only the part of the model after it."""
        import keras
        import tensorflow as tf

        self.layers = (layers,) if isinstance(layers, str) else tuple(layers)
        try:
            outputs = [model.get_layer(name).output for name in self.layers]
            logit = model.get_layer(logit_layer).output
        except ValueError as exc:
            raise ValueError(f"{type(self).__name__}: layer not found in {model.name}: {exc}") from exc
        self.logit_layer = logit_layer
        height, width, channels = (int(d) for d in model.inputs[0].shape[1:])
        self.input_shape = (height, width, channels)
        native_h, native_w = max((o.shape[1:3] for o in outputs), key=lambda s: s[0] * s[1])
        self.native_size = (int(native_h), int(native_w))
        grad_model = keras.Model(model.inputs, [*outputs, logit], name=f"{model.name}_{self.name}")
        layer_map = self.layer_map

        def fuse(activations, gradients):  # per layer (N, h, w, C) -> (N, H, W) in [0, 1]
            maps = []
            for acts, grads in zip(activations, gradients, strict=True):
                cam = tf.nn.relu(layer_map(acts, grads))  # (N, h, w)
                cam = tf.math.divide_no_nan(cam, tf.reduce_max(cam, axis=(1, 2), keepdims=True))
                maps.append(tf.image.resize(cam[..., None], (height, width), method="bilinear")[..., 0])
            fused = tf.add_n(maps) / len(maps)
            fused = tf.math.divide_no_nan(fused, tf.reduce_max(fused, axis=(1, 2), keepdims=True))
            return tf.clip_by_value(fused, 0.0, 1.0)

        def step(images, signs):
            with tf.GradientTape() as tape:
                *activations, logits = grad_model(images, training=False)
                logits = tf.reshape(logits, (-1,))
                score = tf.reduce_sum(signs * logits)
            return fuse(activations, tape.gradient(score, activations)), logits

        signature = (
            tf.TensorSpec((None, *self.input_shape), tf.float32, name="images"),
            tf.TensorSpec((None,), tf.float32, name="signs"),
        )
        self._step = tf.function(step, input_signature=signature, reduce_retracing=True)
        self.root = root
        self.root_shape: tuple[int, ...] | None = None
        self._tail_step = None
        tail = self._tail_model(model, root, logit) if root is not None else None
        if tail is not None:
            later = [name for name in self.layers if name != root]

            def tail_step(root_activation, signs):
                with tf.GradientTape() as tape:
                    tape.watch(root_activation)
                    # a list, or one tensor when the logit is the tail's only output
                    *after, logits = tf.nest.flatten(tail(root_activation, training=False))
                    logits = tf.reshape(logits, (-1,))
                    score = tf.reduce_sum(signs * logits)
                by_name = dict(zip(later, after, strict=True))
                activations = [root_activation if name == root else by_name[name] for name in self.layers]
                return fuse(activations, tape.gradient(score, activations)), logits

            self.root_shape = tuple(int(d) for d in tail.inputs[0].shape[1:])
            tail_signature = (
                tf.TensorSpec((None, *self.root_shape), tf.float32, name="activation"),
                tf.TensorSpec((None,), tf.float32, name="signs"),
            )
            self._tail_step = tf.function(tail_step, input_signature=tail_signature, reduce_retracing=True)

    def _tail_model(self, model: Any, root: str, logit: Any) -> Any | None:
        """model.keras from `root`'s activation to the method's layers and the logit; None where that is not a
        self-contained part of the graph (a skip connection from before `root`, or a layer before it)."""
        import keras

        try:
            later = [model.get_layer(name).output for name in self.layers if name != root]
            return keras.Model(model.get_layer(root).output, [*later, logit], name=f"{model.name}_{self.name}_tail")
        except ValueError:  # Keras: "Graph disconnected", or a layer not downstream of root
            return None

    @property
    def accepts_activation(self) -> bool:
        return self._tail_step is not None

    @staticmethod
    def layer_map(activations, gradients):
        raise NotImplementedError

    @property
    def tracing_count(self) -> int:
        return int(self._step.experimental_get_tracing_count())

    def maps_and_logits(self, batch: np.ndarray, signs: Any = PNEUMONIA_SIGN) -> tuple[np.ndarray, np.ndarray]:
        """Maps (N, H, W) float32 in [0, 1] and the (calibrated) logits (N,) float64 of the same pass."""
        batch = _check_batch(batch, self.input_shape)
        maps, logits = self._step(batch, _signs(signs, len(batch)))
        return np.asarray(maps, dtype=np.float32), np.asarray(logits, dtype=np.float64)

    def __call__(self, batch: np.ndarray, signs: Any = PNEUMONIA_SIGN) -> np.ndarray:
        return self.maps_and_logits(batch, signs)[0]

    def maps_from_activation(
        self, activation: np.ndarray, signs: Any = PNEUMONIA_SIGN
    ) -> tuple[np.ndarray, np.ndarray]:
        """As `maps_and_logits`, from the root layer's activation (N, h, w, C) instead of the image: the same
        maps, without the forward pass up to the root."""
        if self._tail_step is None:
            raise ValueError(f"{self.name} cannot start from an activation (no self-contained model after it)")
        activation = _check_batch(activation, self.root_shape or ())
        maps, logits = self._tail_step(activation, _signs(signs, len(activation)))
        return np.asarray(maps, dtype=np.float32), np.asarray(logits, dtype=np.float64)


class GradCAM(GradientCam):
    """Selvaraju et al. 2017: channel weights are the spatially averaged gradients."""

    name = "gradcam"

    @staticmethod
    def layer_map(activations, gradients):
        import tensorflow as tf

        weights = tf.reduce_mean(gradients, axis=(1, 2), keepdims=True)
        return tf.reduce_sum(weights * activations, axis=-1)


class GradCAMPlusPlus(GradientCam):
    """Chattopadhay et al. 2018, with the closed-form alphas of pytorch-grad-cam (exponential head)."""

    name = "gradcam_pp"

    @staticmethod
    def layer_map(activations, gradients):
        import tensorflow as tf

        g2, g3 = gradients**2, gradients**3
        total = tf.reduce_sum(activations, axis=(1, 2), keepdims=True)
        alpha = tf.math.divide_no_nan(g2, 2.0 * g2 + total * g3)
        weights = tf.reduce_sum(alpha * tf.nn.relu(gradients), axis=(1, 2), keepdims=True)
        return tf.reduce_sum(weights * activations, axis=-1)


class HiResCAM(GradientCam):
    """Draelos & Carin 2020: gradient times activation per position, summed over channels (no averaging)."""

    name = "hirescam"

    @staticmethod
    def layer_map(activations, gradients):
        import tensorflow as tf

        return tf.reduce_sum(gradients * activations, axis=-1)


class LayerCAM(GradientCam):
    """Jiang et al. 2021: positive gradients times activations per position; fused over several layers."""

    name = "layercam"

    @staticmethod
    def layer_map(activations, gradients):
        import tensorflow as tf

        return tf.reduce_sum(tf.nn.relu(gradients) * activations, axis=-1)


class SmoothGradCAM(GradCAM):
    """Grad-CAM averaged over `samples` noisy copies of the input (SmoothGrad, Smilkov et al. 2017).

    The noise is seeded, so a given image always gets the same map.
    """

    name = "smoothgrad_gradcam"

    def __init__(
        self,
        model: Any,
        layers: str | tuple[str, ...],
        logit_layer: str,
        root: str | None = None,
        samples: int = 8,
        sigma: float = 0.1,
    ):
        super().__init__(model, layers, logit_layer)  # no root: the noise goes on the image, not on an activation
        self.samples, self.sigma = samples, sigma

    def __call__(self, batch: np.ndarray, signs: Any = PNEUMONIA_SIGN) -> np.ndarray:
        batch = _check_batch(batch, self.input_shape)
        signs = _signs(signs, len(batch))
        noise = np.random.default_rng(0).normal(0.0, self.sigma * 255.0, (self.samples, *self.input_shape))
        noisy = np.clip(batch[:, None] + noise[None], 0.0, 255.0).astype(np.float32)  # (N, S, H, W, C)
        maps, _ = self.maps_and_logits(noisy.reshape(-1, *self.input_shape), np.repeat(signs, self.samples))
        mean = maps.reshape(len(batch), self.samples, *maps.shape[1:]).mean(axis=1)
        peak = mean.max(axis=(1, 2), keepdims=True)
        return np.divide(mean, peak, out=np.zeros_like(mean), where=peak > 0).astype(np.float32)


class CentralBlob(SaliencyMethod):
    """Baseline: the same centred Gaussian (sigma a quarter of the side) for every image and class."""

    name = "central_blob"

    def __init__(self, input_shape: tuple[int, int, int]):
        self.input_shape = input_shape
        height, width = input_shape[:2]
        self.native_size = (height, width)
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
        d2 = ((yy - (height - 1) / 2) / (0.25 * height)) ** 2 + ((xx - (width - 1) / 2) / (0.25 * width)) ** 2
        self._map = np.exp(-0.5 * d2).astype(np.float32)

    def __call__(self, batch: np.ndarray, signs: Any = PNEUMONIA_SIGN) -> np.ndarray:
        batch = _check_batch(batch, self.input_shape)
        return np.repeat(self._map[None], len(batch), axis=0)


class RandomMap(SaliencyMethod):
    """Baseline: uniform noise on a coarse grid (out_relu's 6x6 by default), bilinearly resized.

    Seeded by the image's bytes: the same image always gets the same random map, and concurrent calls
    share no generator.
    """

    name = "random"

    def __init__(self, input_shape: tuple[int, int, int], grid: tuple[int, int] = (6, 6)):
        self.input_shape = input_shape
        self.native_size = grid

    def __call__(self, batch: np.ndarray, signs: Any = PNEUMONIA_SIGN) -> np.ndarray:
        batch = _check_batch(batch, self.input_shape)
        height, width = self.input_shape[:2]
        maps = []
        for image in batch:
            coarse = np.random.default_rng(zlib.crc32(image.tobytes())).random(self.native_size).astype(np.float32)
            resized = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BILINEAR))
            low, high = resized.min(), resized.max()
            maps.append((resized - low) / (high - low) if high > low else np.zeros_like(resized))
        return np.clip(np.stack(maps), 0.0, 1.0).astype(np.float32)
