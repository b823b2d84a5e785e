"""Percentiles and small helpers shared by the floor and HTTP measurements."""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear-interpolated percentile (numpy's default method), or None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100.0
    low, high = math.floor(position), math.ceil(position)
    if low == high:
        return ordered[low]
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summarize_ms(seconds: Sequence[float], quantiles: Sequence[int] = (50, 95, 99)) -> dict[str, float | int | None]:
    """Latencies given in seconds -> {'n', 'p50_ms', ..., 'mean_ms', 'max_ms'} rounded to 0.01 ms."""
    values = [s * 1000.0 for s in seconds]
    out: dict[str, float | int | None] = {"n": len(values)}
    for q in quantiles:
        p = percentile(values, q)
        out[f"p{q}_ms"] = None if p is None else round(p, 3)
    out["mean_ms"] = round(sum(values) / len(values), 3) if values else None
    out["max_ms"] = round(max(values), 3) if values else None
    return out


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator in (None, 0):
        return None
    return round(numerator / denominator, 3)
