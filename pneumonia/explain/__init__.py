"""Explanations of the classifier's logit: saliency methods (pneumonia.explain.methods), the served registry and
default (pneumonia.explain.explainer), and drawing (pneumonia.explain.overlay). Faithfulness is measured by
`python -m bench.explain`."""

from pneumonia.explain.explainer import (
    BASELINES,
    DEFAULT_METHOD,
    METHOD_NAMES,
    METHODS,
    OVERLAY_MAX_SIDE,
    Explainer,
    ExplanationResult,
    activation_layer,
    build_method,
    encode_map,
    layer_at_stride,
)
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
from pneumonia.explain.overlay import (
    COLOUR_SCALE,
    JET,
    add_colour_bar,
    colorize,
    colour_bar_width,
    encode_png,
    overlay,
)

__all__ = [
    "BASELINES",
    "COLOUR_SCALE",
    "DEFAULT_METHOD",
    "JET",
    "METHODS",
    "METHOD_NAMES",
    "CentralBlob",
    "OVERLAY_MAX_SIDE",
    "Explainer",
    "ExplanationResult",
    "GradCAM",
    "GradCAMPlusPlus",
    "GradientCam",
    "HiResCAM",
    "LayerCAM",
    "RandomMap",
    "SaliencyMethod",
    "SmoothGradCAM",
    "activation_layer",
    "add_colour_bar",
    "build_method",
    "class_sign",
    "colorize",
    "colour_bar_width",
    "encode_map",
    "encode_png",
    "layer_at_stride",
    "overlay",
]
