"""The served explanations: which methods exist, which one is the default, and one call that turns an
image into a map, an overlay PNG and the facts a response reports (method, layers, explained class)."""

from __future__ import annotations

import base64
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from pneumonia.explain.methods import (
    CentralBlob,
    GradCAM,
    GradCAMPlusPlus,
    GradientCam,
    HiResCAM,
    LayerCAM,
    RandomMap,
    SaliencyMethod,
    SmoothGradCAM,
    class_sign,
)
from pneumonia.explain.overlay import add_colour_bar, encode_png, overlay

# name -> (class, layers). Layers are the bundle's Grad-CAM layer ("bundle"; out_relu, 6x6 at 192 px, for
# MobileNetV2) or the last layer of the backbone at 1/8 or 1/16 of the input ("stride8": block_6_expand_relu,
# 24x24; "stride16": block_13_expand_relu, 12x12), found by output size so any backbone works.
# Any: the classes' constructors differ (baselines take the input shape, gradient methods the model).
METHODS: dict[str, tuple[Any, tuple[str, ...]]] = {
    "gradcam": (GradCAM, ("bundle",)),
    "gradcam_stride16": (GradCAM, ("stride16",)),
    "gradcam_stride8": (GradCAM, ("stride8",)),
    "gradcam_pp": (GradCAMPlusPlus, ("bundle",)),
    "hirescam": (HiResCAM, ("bundle",)),
    "layercam": (LayerCAM, ("stride8", "stride16", "bundle")),
    "smoothgrad_gradcam": (SmoothGradCAM, ("bundle",)),
    "central_blob": (CentralBlob, ()),
    "random": (RandomMap, ()),
}
METHOD_NAMES = tuple(METHODS)
BASELINES = ("central_blob", "random")

# The served default, chosen by the faithfulness benchmark (python -m bench.explain; results/explanations/
# and docs/explanations.md, "Which one is faithful"): the method must beat the central blob and the
# random map under every replacement scheme by more than the 95% bootstrap interval, change when the top
# layers are randomised, and keep /explain within 3x /predict.
# Evidence (results/explanations/explanations.md, 60 validation images, mobilenetv2-192): only Grad-CAM at
# stride 8 (block_6_expand_relu, 24x24) beats both baselines under blur, mean and ROAD replacement (paired gap
# differences above 0 at 95%: vs the blob +2.2 [0.4, 4.0] blur, +2.2 [0.3, 4.1] mean, +3.0 [0.4, 5.6] ROAD
# logits; vs random +2.8, +3.4, +3.6, every lower bound >= 1.5) and passes the randomisation check (rank
# correlation -0.52 [-0.61, -0.41]). The former default, out_relu Grad-CAM, beats the central blob under no
# scheme (its paired differences are negative: -0.3, -1.3, -0.5, every CI spanning or below 0).
# Its cost against /predict: docs/explanations.md, "What it costs" (bench/results/benchmark.md).
DEFAULT_METHOD = "gradcam_stride8"


def layer_at_stride(model: Any, stride: int) -> str:
    """The last layer whose output is (N, H/stride, W/stride, C): the end of that resolution stage."""
    height, width = (int(d) for d in model.inputs[0].shape[1:3])
    target = (height // stride, width // stride)
    names = [
        layer.name
        for layer in model.layers
        if len(getattr(layer.output, "shape", ())) == 4 and tuple(layer.output.shape[1:3]) == target
    ]
    if not names:
        raise ValueError(f"{model.name} has no layer with a {target[0]}x{target[1]} output (stride {stride})")
    return names[-1]


def resolve_layers(model: Any, bundle_layer: str) -> dict[str, str]:
    return {"bundle": bundle_layer, "stride16": layer_at_stride(model, 16), "stride8": layer_at_stride(model, 8)}


def activation_layer(model: Any) -> str:
    """The layer whose activation model.onnx also outputs (bundle `explain_activation`): the stride-8 layer,
    the earliest any gradient method above reads, so every one of them can start from it."""
    return layer_at_stride(model, 8)


def build_method(name: str, model: Any, bundle_layer: str, logit_layer: str, root: str | None = None) -> SaliencyMethod:
    cls, roles = METHODS[name]
    if not roles:
        return cls(tuple(int(d) for d in model.inputs[0].shape[1:]))
    layers = resolve_layers(model, bundle_layer)
    return cls(model, tuple(layers[role] for role in roles), logit_layer, root=root)


def encode_map(values: np.ndarray) -> str:
    """Base64 of the map as little-endian float32, row-major."""
    return base64.b64encode(np.ascontiguousarray(values, dtype="<f4").tobytes()).decode("ascii")


# The overlay's image is sent at most this large on its longer side (aspect kept): a 4000x4000 film's full-size
# overlay was 10 MB of JSON, far more than a screen shows. None (/explain?overlay=full) keeps the image's size.
# The colour bar's strip is added beside the (capped) image, so the PNG is colour_bar_width(H) px wider.
OVERLAY_MAX_SIDE = 1024


def shrink_to(pixels: np.ndarray, max_side: int | None) -> np.ndarray:
    """(H, W) uint8 scaled down (area average) so its longer side is at most `max_side`; unchanged if smaller."""
    height, width = pixels.shape
    if max_side is None or max(height, width) <= max_side:
        return pixels
    from PIL import Image

    scale = max_side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(pixels).resize(size, Image.Resampling.BOX), dtype=np.uint8)


@dataclass(frozen=True)
class ExplanationResult:
    # the overlay at the uploaded image's size (capped at OVERLAY_MAX_SIDE unless asked), then the colour bar's
    # strip to its right: (H, W + colour_bar_width(H)) pixels
    png: bytes
    values: np.ndarray  # (H, W) float32 in [0, 1] at the model-input resolution
    method: str
    layers: tuple[str, ...]
    explained_class: str
    resolution: str = "model_input"


class Explainer:
    """Every method over one Keras model, built on first use; layer names are checked at construction."""

    def __init__(
        self,
        model: Any,
        bundle_layer: str,
        logit_layer: str,
        default_method: str = DEFAULT_METHOD,
        root: str | None = None,
    ):
        """`root`: the layer whose activation the caller passes to `explain` (the bundle's explain_activation)."""
        try:
            for name in (bundle_layer, logit_layer, *([root] if root else [])):
                model.get_layer(name)
        except ValueError as exc:
            raise ValueError(f"Grad-CAM layer not found in {model.name}: {exc}") from exc
        layers = resolve_layers(model, bundle_layer)
        self.default_method = default_method
        # What GET /model says of the explanations (fixed for the model, so built once): the default, every
        # method with the layers it reads, and the layer /explain starts from (None: maps run from the image).
        self.description: dict[str, Any] = {
            "default_method": default_method,
            "methods": {name: [layers[role] for role in roles] for name, (_, roles) in METHODS.items()},
            "baselines": list(BASELINES),
            "starts_from_layer": root,
        }
        self._args = (model, bundle_layer, logit_layer, root)
        self._methods: dict[str, SaliencyMethod] = {}
        self._lock = threading.Lock()

    def method(self, name: str | None = None) -> SaliencyMethod:
        name = name or self.default_method
        if name not in METHODS:
            raise ValueError(f"unknown explanation method {name!r}; valid: {', '.join(METHOD_NAMES)}")
        with self._lock:
            if name not in self._methods:
                self._methods[name] = build_method(name, *self._args)
            return self._methods[name]

    def explain(
        self,
        pixels: np.ndarray,
        batch: np.ndarray,
        explained_class: str,
        method: str | None = None,
        activation: np.ndarray | None = None,
        overlay_max_side: int | None = OVERLAY_MAX_SIDE,
    ) -> ExplanationResult:
        """pixels: the decoded (H, W) uint8 image; batch: its (1, h, w, 3) model input; activation: the root
        layer's (1, h', w', C) activation for that input (model.onnx's explain_activation), or None.

        With the activation, a method that can start from it skips the forward pass up to the root layer (the
        most expensive part of /explain); the map is the same either way."""
        name = method or self.default_method
        chosen = self.method(name)
        pixels = shrink_to(pixels, overlay_max_side)
        sign = class_sign(explained_class)
        if activation is not None and isinstance(chosen, GradientCam) and chosen.accepts_activation:
            values = chosen.maps_from_activation(activation, sign)[0][0]
        else:
            values = chosen(batch, sign)[0]
        png = encode_png(add_colour_bar(overlay(pixels, values)))
        return ExplanationResult(png, values, name, chosen.layers, explained_class)
