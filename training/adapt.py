"""`python -m training adapt`: site adaptation of a bundle from a folder of unlabeled X-rays (AdaBN).

Re-estimates every BatchNorm layer's moving mean and variance on the new site's images (Li et al. 2016,
"Revisiting batch normalization for practical domain adaptation"): the network's weights, the calibration and
the operating points stay as they were chosen on the unadapted validation split; only the normalisation of
each layer's activations follows the new site. Images are read by the service's own path (`pneumonia.imaging`) and
must pass the source bundle's input check (turned back upright when it says so). The source bundle is never
touched; the new one is written staged and parity-checked like an export, and records how it was made.

Prevalence re-estimation (Saerens et al. 2002) is not applied: on the simulated sites (results/adaptation) the
validation prevalence is unchanged, so there is no evidence here for it, and a label-free threshold shift is
what the issue's outside measurements found to overshoot.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pneumonia.bundle import PARITY_TOLERANCE, SCHEMA_VERSION, Adaptation, BundleMetadata, utc_now
from pneumonia.imaging import ImageInputError, decode_image, find_images, to_model_input
from pneumonia.input_check import load_checker
from training.derive import DerivedModels, derive_bundle, read_source
from training.errors import TrainingError

log = logging.getLogger(__name__)

# Fewest images accepted by default. On the simulated sites (results/adaptation/README.md) 25 images already
# moved specificity most of the way; below that the BatchNorm estimates of the deepest layers are noisy.
DEFAULT_MIN_IMAGES = 50
BATCH_SIZE = 32
ADABN_METHOD = "AdaBN: BatchNorm moving mean/variance re-estimated on the site's images (weights, calibration and thresholds unchanged)"


class AdaptError(TrainingError):
    """Adaptation refused: too few usable images, or an invalid source bundle."""


@dataclass(frozen=True)
class SiteImages:
    images: np.ndarray  # (N, H, W, 3) float32 model inputs, upright
    hashes: list[str]  # SHA-256 of each used file
    skipped: list[tuple[str, str]]  # (path, reason)


def read_site_images(bundle_dir: Path, metadata: BundleMetadata, folder: Path) -> SiteImages:
    """Decode, check and prepare every image; skipped ones are reported with their reason."""
    checker = load_checker(bundle_dir, metadata)
    size = metadata.input_size
    images, hashes, skipped = [], [], []
    for relative in find_images(Path(folder)):
        path = Path(folder) / relative
        data = path.read_bytes()
        try:
            image = decode_image(data)
        except ImageInputError as exc:
            skipped.append((str(path), f"{exc.code}: {exc.message}"))
            continue
        gray = to_model_input(image, size)[:, :, 0]
        check, upright = checker.inspect(image, gray, "refuse")
        if not check.accepted:  # the out-of-distribution score needs the model; cheap checks, orientation suffice
            skipped.append((str(path), "not a chest X-ray: " + "; ".join(check.reasons)))
            continue
        images.append(to_model_input(upright, size))
        hashes.append(hashlib.sha256(data).hexdigest())
    stacked = np.stack(images) if images else np.zeros((0, *size, 3), np.float32)
    return SiteImages(stacked, hashes, skipped)


def images_digest(hashes: list[str]) -> str:
    """SHA-256 over the sorted per-file SHA-256s: the same set of files gives the same digest in any order."""
    return hashlib.sha256("\n".join(sorted(hashes)).encode()).hexdigest()


def adapt_batchnorm(model, images: np.ndarray, batch_size: int = BATCH_SIZE) -> int:
    """Replace every BatchNorm layer's moving statistics by their average over batches of `images`.

    Each batch runs in training mode, so every layer normalises with the site's batch statistics (AdaBN);
    momentum (b-1)/b for batch b makes the moving statistics the running mean of the batch statistics.
    Returns the number of BatchNorm layers. Weights other than the moving statistics are untouched.
    """
    from keras import layers

    norms = [layer for layer in model.layers if isinstance(layer, layers.BatchNormalization)]
    saved = [(layer.momentum, layer.trainable) for layer in norms]
    try:
        for layer in norms:
            layer.trainable = True  # a frozen BatchNorm ignores training=True
        order = np.random.default_rng(0).permutation(len(images))
        for index, start in enumerate(range(0, len(images), batch_size)):
            for layer in norms:
                layer.momentum = index / (index + 1)  # batch 0 replaces, batch b averages in 1/(b+1)
            model(images[order[start : start + batch_size]], training=True)
    finally:
        for layer, (momentum, trainable) in zip(norms, saved, strict=True):
            layer.momentum, layer.trainable = momentum, trainable
    return len(norms)


def adapt_bundle(
    bundle_dir: Path,
    folder: Path,
    out_dir: Path,
    *,
    min_images: int = DEFAULT_MIN_IMAGES,
    parity_tolerance: float = PARITY_TOLERANCE,
) -> Path:
    source = read_source(bundle_dir, out_dir, AdaptError)
    metadata = source.metadata
    site = read_site_images(source.path, metadata, folder)
    for path, reason in site.skipped:
        log.warning("skipped %s: %s", path, reason)
    if len(site.images) < min_images:
        raise AdaptError(
            f"{folder}: {len(site.images)} usable chest X-rays, fewer than --min-images {min_images} "
            f"({len(site.skipped)} skipped); nothing was written"
        )
    layers_adapted = 0

    def change(model) -> None:
        nonlocal layers_adapted
        layers_adapted = adapt_batchnorm(model, site.images)

    def adapted(derived: DerivedModels, model) -> BundleMetadata:
        return metadata.model_copy(
            update={
                **derived.update,
                "schema_version": SCHEMA_VERSION,
                "name": f"{metadata.name}-adapted",
                "version": f"{metadata.version}+adabn.{utc_now():%Y%m%d%H%M%S}",
                "adaptation": Adaptation(
                    method=ADABN_METHOD,
                    source_bundle=f"{metadata.name} {metadata.version}",
                    source_version=metadata.version,
                    n_images=len(site.images),
                    images_sha256=images_digest(site.hashes),
                    adapted_at=utc_now(),
                    skipped=len(site.skipped),
                    note=(
                        f"{layers_adapted} BatchNorm layers re-estimated; ONNX/Keras parity {derived.parity:.1e}. "
                        "Calibration, operating points and the input and population checks' thresholds come from the unadapted "
                        "model's validation split: the validation metrics below describe the source model."
                    ),
                ),
            }
        )

    return derive_bundle(source, out_dir, change, site.images, adapted, parity_tolerance)
