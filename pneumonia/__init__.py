"""Pneumonia-screening research models: load a verified bundle, predict, explain. Not a medical device.

    import pneumonia
    model = pneumonia.Model.load("models/default")
    prediction = model.predict("xray.jpeg")          # .probability, .label, .input_check, .disclaimer
    explanation = model.explain("xray.jpeg")         # .map, .overlay_png, .prediction

The public names are imported on first use, so `import pneumonia.bundle` (training, the service's start-up)
does not pay for onnxruntime.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_PUBLIC = {
    "Model": "pneumonia.model",
    "Prediction": "pneumonia.model",
    "Explanation": "pneumonia.model",
    "ScoredItem": "pneumonia.model",
    "ImageRefusedError": "pneumonia.model",
    "BundleError": "pneumonia.bundle",
    "BundleMetadata": "pneumonia.bundle",
    "RESEARCH_DISCLAIMER": "pneumonia.bundle",
    "ErrorCode": "pneumonia.errors",
    "PneumoniaError": "pneumonia.errors",
    "InputCheckResult": "pneumonia.input_check",
}
__all__ = [
    "RESEARCH_DISCLAIMER",
    "BundleError",
    "BundleMetadata",
    "ErrorCode",
    "Explanation",
    "ImageRefusedError",
    "InputCheckResult",
    "Model",
    "PneumoniaError",
    "Prediction",
    "ScoredItem",
    "__version__",
]

if TYPE_CHECKING:
    from pneumonia.bundle import RESEARCH_DISCLAIMER, BundleError, BundleMetadata
    from pneumonia.errors import ErrorCode, PneumoniaError
    from pneumonia.input_check import InputCheckResult
    from pneumonia.model import Explanation, ImageRefusedError, Model, Prediction, ScoredItem


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'pneumonia' has no attribute {name!r}")
