"""Labelled 'sites' for the site-report and calibrate tests: real image files in NORMAL/ and PNEUMONIA/ folders,
generated from the committed sample X-rays (tests/data/samples), plus files the service refuses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

SAMPLES_DIR = Path(__file__).resolve().parents[1] / "data" / "samples"
CLASSES = ("NORMAL", "PNEUMONIA")


def variant(source: Path, index: int, rng: np.random.Generator) -> Image.Image:
    """A plausible variation of a sample X-ray (crop, blur, noise), at 96 px like the tiny dataset."""
    image = Image.open(source).convert("L")
    width, height = image.size
    margin = int(rng.integers(0, 20))
    image = image.crop((margin, margin, width - margin, height - margin)).resize((96, 96))
    if index % 3 == 1:
        image = image.filter(ImageFilter.GaussianBlur(1))
    pixels = np.asarray(image, dtype=np.float32) + rng.normal(0, 4, (96, 96))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def candidates(root: Path, per_class: int, seed: int = 7) -> list[Path]:
    """`per_class` variants of each class's samples, written as JPEG files under root/pool/<class>/."""
    rng = np.random.default_rng(seed)
    written = []
    for label in CLASSES:
        sources = sorted((SAMPLES_DIR / label).glob("*.jpeg"))
        folder = root / "pool" / label
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            path = folder / f"{label.lower()}_{i:03d}.jpeg"
            variant(sources[i % len(sources)], i, rng).save(path, quality=92)
            written.append(path)
    return written


def colour_photo(path: Path) -> Path:
    """A colour picture: the input check's cheap colour test refuses it whatever the fitted detector says."""
    yy, xx = np.mgrid[0:96, 0:96]
    rgb = np.stack([xx * 2, yy * 2, 255 - xx * 2], axis=-1).astype(np.uint8)
    Image.fromarray(rgb).save(path)
    return path


def truncated_png(path: Path) -> Path:
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    return path
