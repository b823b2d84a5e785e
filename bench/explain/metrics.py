"""Faithfulness metrics for saliency maps, in numpy (plus scipy for ROAD's sparse solve).

Perturbation curves (Petsiuk et al. 2018; ROAD, Rong et al. 2022): the image is cut into square blocks,
ranked by the map's mean over each block, and a growing fraction of blocks is replaced. The score is the
model's LOGIT for the explained class (sign * logit), because the probabilities saturate near 0 and 1.

- MoRF: most-relevant blocks replaced first. Its area is the deletion AUC (lower = more faithful).
- LeRF: least-relevant first. Replacing the least-relevant fraction f leaves exactly the image that
  insertion (most-relevant revealed first) shows at 1 - f, so the LeRF area IS the insertion AUC
  (higher = more faithful) and one pair of curves gives both.
- gap = LeRF - MoRF (= insertion - deletion): the summary score; a map no better than chance scores ~0.

Replacement schemes: "blur" (a Gaussian-blurred copy: Petsiuk's baseline, which leaks the removed region's
low frequencies), "mean" (the image's mean grey) and "road" (noisy linear imputation from the KEPT
neighbours only, so neither the removed content nor a sharp mask edge reaches the model).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image, ImageFilter

SCHEMES = ("blur", "mean", "road")
BLOCK = 4  # pixels per block side at the model input (48x48 blocks at 192 px: finer than any map's grid)
BLUR_SIGMA = 8.0  # pixels at the model input
ROAD_NOISE = 0.01 * 255.0  # ROAD's noise (std 0.01 on a 0..1 image), in grey levels


def block_means(values: np.ndarray, block: int = BLOCK) -> np.ndarray:
    height, width = values.shape[:2]
    return values.reshape(height // block, block, width // block, block, *values.shape[2:]).mean(axis=(1, 3))


def block_ranking(saliency: np.ndarray, rng: np.random.Generator, block: int = BLOCK) -> np.ndarray:
    """Block indices, most relevant first. Ties (flat maps, upsampled grids) are broken at random, not by
    raster order, which would favour the top of the image."""
    means = block_means(saliency, block).ravel()
    return np.lexsort((rng.random(means.size), -means))


def masks(order: np.ndarray, grid: tuple[int, int], fractions: np.ndarray, block: int = BLOCK) -> np.ndarray:
    """(F, H, W) bool: True where a block is replaced, for the first round(f * n) blocks of `order`."""
    n = order.size
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    counts = np.round(np.asarray(fractions) * n).astype(np.int64)
    coarse = rank.reshape(grid)[None] < counts[:, None, None]
    return np.repeat(np.repeat(coarse, block, axis=1), block, axis=2)


def blurred(image: np.ndarray, sigma: float = BLUR_SIGMA) -> np.ndarray:
    """(H, W) float grey image blurred with a Gaussian of `sigma` pixels."""
    pil = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))
    return np.asarray(pil.filter(ImageFilter.GaussianBlur(sigma)), dtype=np.float32)


def road_impute(image: np.ndarray, removed: np.ndarray, rng: np.random.Generator, block: int = BLOCK) -> np.ndarray:
    """ROAD's noisy linear imputation, solved on the block grid.

    Each removed block takes the weighted mean of its 8 neighbours (direct 1/6, diagonal 1/12, as in Rong et
    al.), kept neighbours entering as constants: one sparse linear system. The block grid is upsampled
    bilinearly, only removed pixels are overwritten and Gaussian noise is added to them. With every block
    removed nothing is known and the image's mean fills it.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.linalg import spsolve

    coarse = block_means(image, block).astype(np.float64)
    gone = block_means(removed.astype(np.float64), block) > 0.5
    filled = coarse.copy()
    if gone.all():
        filled[:] = image.mean()
    elif gone.any():
        rows_n, cols_n = gone.shape
        index = -np.ones(gone.shape, dtype=np.int64)
        index[gone] = np.arange(int(gone.sum()))
        rows, cols, vals = [], [], []
        rhs = np.zeros(int(gone.sum()))
        weight_sum = np.zeros(int(gone.sum()))
        ys, xs = np.nonzero(gone)
        for dy, dx, w in [(-1, 0, 1 / 6), (1, 0, 1 / 6), (0, -1, 1 / 6), (0, 1, 1 / 6),
                          (-1, -1, 1 / 12), (-1, 1, 1 / 12), (1, -1, 1 / 12), (1, 1, 1 / 12)]:  # fmt: skip
            ny, nx = ys + dy, xs + dx
            inside = (ny >= 0) & (ny < rows_n) & (nx >= 0) & (nx < cols_n)
            me = index[ys[inside], xs[inside]]
            weight_sum[me] += w
            unknown = gone[ny[inside], nx[inside]]
            rows += list(me[unknown])
            cols += list(index[ny[inside][unknown], nx[inside][unknown]])
            vals += [-w] * int(unknown.sum())
            np.add.at(rhs, me[~unknown], w * coarse[ny[inside][~unknown], nx[inside][~unknown]])
        size = int(gone.sum())
        diagonal = np.arange(size)
        matrix = coo_matrix(
            (np.concatenate([weight_sum, vals]), (np.concatenate([diagonal, rows]), np.concatenate([diagonal, cols]))),
            shape=(size, size),
        ).tocsr()
        filled[gone] = spsolve(matrix, rhs)
    height, width = image.shape
    smooth = np.asarray(Image.fromarray(filled.astype(np.float32)).resize((width, height), Image.Resampling.BILINEAR))
    noisy = smooth + rng.normal(0.0, ROAD_NOISE, smooth.shape)
    return np.where(removed, noisy, image).clip(0, 255).astype(np.float32)


def perturbed(image: np.ndarray, replaced: np.ndarray, scheme: str, rng: np.random.Generator) -> np.ndarray:
    """(F, H, W) grey images: `image` with each mask's pixels replaced by `scheme`."""
    if scheme == "blur":
        return np.where(replaced, blurred(image)[None], image[None]).astype(np.float32)
    if scheme == "mean":
        return np.where(replaced, np.float32(image.mean()), image[None]).astype(np.float32)
    if scheme == "road":
        return np.stack([road_impute(image, m, rng) for m in replaced])
    raise ValueError(f"unknown replacement scheme {scheme!r}; valid: {', '.join(SCHEMES)}")


def area(curve: np.ndarray, fractions: np.ndarray) -> float:
    """Normalised area under a curve over fractions 0..1 (trapezoid): the curve's mean height."""
    return float(np.sum((curve[1:] + curve[:-1]) * np.diff(fractions)) / 2.0)


def curves(
    image: np.ndarray,
    saliency: np.ndarray,
    sign: float,
    score: Callable[[np.ndarray], np.ndarray],
    scheme: str,
    fractions: np.ndarray,
    seed: int,
) -> dict[str, np.ndarray]:
    """MoRF and LeRF curves of sign * logit for one grey image (H, W) 0..255 and its map (H, W).

    `score` maps (N, H, W) grey images to logits (N,). Both curves share the endpoints (nothing / all
    replaced), which are scored once.
    """
    rng = np.random.default_rng(seed)
    grid = (image.shape[0] // BLOCK, image.shape[1] // BLOCK)
    order = block_ranking(saliency, rng)
    inner = fractions[1:-1]
    batch = np.concatenate([
        perturbed(image, masks(order, grid, fractions[[0, -1]]), scheme, rng),
        perturbed(image, masks(order, grid, inner), scheme, rng),
        perturbed(image, masks(order[::-1], grid, inner), scheme, rng),
    ])  # fmt: skip
    values = sign * np.asarray(score(batch), dtype=np.float64)
    k = inner.size
    ends, morf, lerf = values[:2], values[2 : 2 + k], values[2 + k :]
    return {"morf": np.concatenate([[ends[0]], morf, [ends[1]]]), "lerf": np.concatenate([[ends[0]], lerf, [ends[1]]])}


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Rank correlation of two maps; a constant map correlates 0 with anything (it ranks nothing)."""
    from scipy.stats import spearmanr

    a, b = np.ravel(a), np.ravel(b)
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return 1.0 if np.array_equal(a, b) else 0.0
    return float(spearmanr(a, b).statistic)


def bootstrap_mean(values: np.ndarray, samples: int = 2000, seed: int = 0) -> dict[str, float]:
    """Mean over images with its 95% percentile bootstrap interval (resampling images)."""
    values = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, (samples, values.size))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return {"mean": float(values.mean()), "ci_low": float(low), "ci_high": float(high), "n": int(values.size)}
