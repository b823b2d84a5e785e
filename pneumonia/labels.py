"""The label rule and operating-point resolution, defined once for every Python entry point.

A case is PNEUMONIA when its calibrated probability is at or above the threshold. Training's metrics and
reports, the service, batch scoring and the PACS worker use it; the page re-labels in JavaScript by the same
rule (app/static/app.js, checked by the browser tests).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from pneumonia.bundle import BundleMetadata
from pneumonia.errors import ErrorCode, PneumoniaError

Label = Literal["NORMAL", "PNEUMONIA"]
CUSTOM_OPERATING_POINT = "custom"


def positive_mask(scores: np.ndarray | float, threshold: float) -> np.ndarray:
    """The label rule: True where the label is PNEUMONIA (score at or above the threshold; probabilities or
    logits alike, as long as the threshold is on the same scale)."""
    return np.asarray(scores) >= threshold


def label_for(probability: float, threshold: float) -> Label:
    return "PNEUMONIA" if positive_mask(probability, threshold) else "NORMAL"


class UnknownOperatingPointError(PneumoniaError):
    code = ErrorCode.UNKNOWN_OPERATING_POINT


class ConflictingDecisionError(PneumoniaError):
    code = ErrorCode.INVALID_REQUEST


@dataclass(frozen=True)
class Decision:
    """The threshold a label is decided at, and the operating point it came from ('custom' for a bare number)."""

    threshold: float
    operating_point: str


def resolve_decision(
    metadata: BundleMetadata, operating_point: str | None = None, threshold: float | None = None
) -> Decision:
    """A named operating point of the bundle (default: the bundle's default), or a custom threshold."""
    if operating_point is not None and threshold is not None:
        raise ConflictingDecisionError("Give either operating_point or threshold, not both.")
    if threshold is not None:
        if not 0.0 <= threshold <= 1.0:
            raise ConflictingDecisionError(f"threshold must lie in [0, 1], got {threshold}.")
        return Decision(threshold=float(threshold), operating_point=CUSTOM_OPERATING_POINT)
    names = [p.name for p in metadata.operating_points]
    if operating_point is not None and operating_point not in names:
        raise UnknownOperatingPointError(
            f"Unknown operating_point {operating_point!r}; valid names: {', '.join(names)}."
        )
    point = metadata.operating_point(operating_point)
    return Decision(threshold=point.threshold, operating_point=point.name)
