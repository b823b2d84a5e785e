"""A stress check built from validation images alone.

Validation flatters: its images come from the same hospital, machines and processing as training. The
same validation images under contrast, gamma, blur, noise and crop/shift changes show how much a model
and its threshold depend on acquisition details, without touching any test data.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image, ImageFilter

Perturbation = Callable[[np.ndarray, np.random.Generator], np.ndarray]  # (H, W) uint8 -> (H, W) uint8


def contrast(factor: float) -> Perturbation:
    def apply(gray, rng):
        mean = gray.mean()
        return np.clip((gray.astype(np.float32) - mean) * factor + mean, 0, 255).astype(np.uint8)

    return apply


def _gamma(gamma: float) -> Perturbation:
    def apply(gray, rng):
        return np.clip(255.0 * (gray / 255.0) ** gamma, 0, 255).astype(np.uint8)

    return apply


def _blur(radius: float) -> Perturbation:
    def apply(gray, rng):
        return np.asarray(Image.fromarray(gray).filter(ImageFilter.GaussianBlur(radius)))

    return apply


def _noise(sigma: float) -> Perturbation:
    def apply(gray, rng):
        return np.clip(gray + rng.normal(0.0, sigma, gray.shape), 0, 255).astype(np.uint8)

    return apply


def _center_crop(keep: float) -> Perturbation:
    def apply(gray, rng):
        h, w = gray.shape
        ch, cw = int(h * keep), int(w * keep)
        top, left = (h - ch) // 2, (w - cw) // 2
        crop = Image.fromarray(gray[top : top + ch, left : left + cw])
        return np.asarray(crop.resize((w, h), Image.Resampling.BILINEAR))

    return apply


def _shift(fraction: float) -> Perturbation:
    def apply(gray, rng):
        h, w = gray.shape
        dy, dx = int(h * fraction), int(w * fraction)
        shifted = np.zeros_like(gray)
        shifted[dy:, dx:] = gray[: h - dy, : w - dx]
        return shifted

    return apply


PERTURBATIONS: dict[str, Perturbation] = {
    "contrast_low": contrast(0.6),
    "contrast_high": contrast(1.4),
    "gamma_dark": _gamma(1.6),
    "gamma_bright": _gamma(0.6),
    "blur": _blur(1.5),
    "noise": _noise(12.0),
    "crop_85": _center_crop(0.85),
    "shift_8": _shift(0.08),
}


def perturb(images: np.ndarray, perturbation: Perturbation, seed: int = 0) -> np.ndarray:
    """(N, H, W, 3) model inputs (gray replicated) -> perturbed copies of the same shape and dtype."""
    rng = np.random.default_rng(seed)
    gray = images[..., 0].astype(np.uint8)  # channels are identical: pneumonia.imaging replicates grayscale
    out = np.stack([perturbation(g, rng) for g in gray])
    return np.repeat(out[..., None], 3, axis=3).astype(images.dtype)


def perturbed_predictions(images: np.ndarray, predict: Callable[[np.ndarray], np.ndarray]) -> dict[str, np.ndarray]:
    """P(pneumonia) for every perturbation of the validation images, keyed by perturbation name."""
    return {name: predict(perturb(images, perturbation)) for name, perturbation in PERTURBATIONS.items()}


def stress_report(
    y: np.ndarray,
    predictions: dict[str, np.ndarray],
    threshold: float,
    metrics: Callable[[np.ndarray, np.ndarray, float], dict[str, float]],
) -> dict[str, dict[str, float]]:
    """ROC-AUC and sensitivity/specificity at `threshold` for each perturbation of the validation set."""
    report = {}
    for name, p in predictions.items():
        m = metrics(y, p, threshold)
        report[name] = {k: round(m[k], 4) for k in ("roc_auc", "sensitivity", "specificity", "accuracy")}
        report[name]["mean_probability"] = round(float(np.mean(p)), 4)
    return report
