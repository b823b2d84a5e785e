"""The out-of-distribution corpus of `python -m bench.ood`: only images that can be shipped or generated.

Three families, each image tagged with a `kind` so the benchmark can report a catch rate per kind:
- `package`: pictures shipped inside installed packages (scikit-image's `skimage.data`, scikit-learn's
  sample images, pydicom's CT/MR test files), with crops and grayscale versions;
- generated: documents (rendered text), charts, noise, gradients and coloured blocks;
- transformed validation X-rays: rotated, inverted, heavily cropped, colourised (the X-ray kinds the service
  must refuse or rotate back), built from the caller's clean validation images.
Every item is encoded to PNG (or is a DICOM file) and goes through the service's own decoder.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

WORDS = [
    "patient",
    "report",
    "findings",
    "impression",
    "lungs",
    "clear",
    "no",
    "acute",
    "cardiopulmonary",
    "process",
    "heart",
    "size",
    "normal",
    "invoice",
    "total",
    "amount",
    "due",
    "payment",
    "terms",
    "lorem",
    "ipsum",
    "dolor",
    "sit",
    "amet",
    "consectetur",
    "adipiscing",
    "elit",
    "sed",
    "do",
]


@dataclass(frozen=True)
class CorpusItem:
    kind: str  # e.g. "document", "photo", "rotated_90"
    name: str
    data: bytes  # PNG or DICOM bytes, as a client would upload them


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(pixels, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


# --- generated ------------------------------------------------------------------------------------------------
def document(rng: np.random.Generator, size: int = 512) -> np.ndarray:
    image = Image.new("L", (size, int(size * rng.uniform(1.0, 1.4))), color=int(rng.integers(225, 256)))
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=int(rng.integers(12, 28)))
    y = int(rng.integers(10, 40))
    while y < image.height - 30:
        line = " ".join(rng.choice(WORDS, size=int(rng.integers(3, 9))))
        draw.text((int(rng.integers(10, 40)), y), line, fill=int(rng.integers(0, 60)), font=font)
        y += int(rng.integers(22, 44))
    return np.asarray(image)


def chart(rng: np.random.Generator, size: int = 400) -> np.ndarray:
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    draw.line([(40, 20), (40, size - 40), (size - 20, size - 40)], fill="black", width=2)
    colour = tuple(int(c) for c in rng.integers(0, 200, 3))
    if rng.random() < 0.5:  # bar chart
        bars = int(rng.integers(3, 10))
        width = (size - 80) // bars
        for i in range(bars):
            top = int(rng.integers(40, size - 60))
            draw.rectangle([50 + i * width, top, 50 + i * width + width - 8, size - 41], fill=colour)
    else:  # line chart
        xs = np.linspace(45, size - 25, 30)
        ys = size / 2 + np.cumsum(rng.normal(0, 12, 30))
        draw.line(list(zip(xs.tolist(), np.clip(ys, 25, size - 45).tolist(), strict=False)), fill=colour, width=3)
    return np.asarray(image)


def noise(rng: np.random.Generator, size: int = 256) -> np.ndarray:
    kind = rng.integers(0, 4)
    if kind == 0:
        return np.clip(rng.normal(128, rng.uniform(20, 70), (size, size)), 0, 255)
    if kind == 1:
        return rng.integers(0, 256, (size, size))
    if kind == 2:
        return rng.integers(0, 256, (size, size, 3))
    coarse = rng.normal(128, 50, (size // 16, size // 16))  # blotchy low-frequency noise
    return np.asarray(
        Image.fromarray(np.clip(coarse, 0, 255).astype(np.uint8)).resize((size, size), Image.Resampling.BILINEAR)
    )


def gradient(rng: np.random.Generator, size: int = 256) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] / size
    angle = rng.uniform(0, np.pi)
    ramp = np.cos(angle) * xx + np.sin(angle) * yy
    if rng.random() < 0.5:
        ramp = np.hypot(xx - rng.random(), yy - rng.random())
    ramp = (ramp - ramp.min()) / (np.ptp(ramp) + 1e-9)
    if rng.random() < 0.5:
        return 255 * ramp
    colours = rng.integers(0, 256, (2, 3))
    return colours[0] * (1 - ramp[..., None]) + colours[1] * ramp[..., None]


def blocks(rng: np.random.Generator, size: int = 256) -> np.ndarray:
    image = np.full((size, size, 3), rng.integers(0, 256, 3), dtype=np.float64)
    for _ in range(int(rng.integers(3, 12))):
        x0, y0 = rng.integers(0, size - 20, 2)
        x1, y1 = x0 + rng.integers(20, size // 2), y0 + rng.integers(20, size // 2)
        image[y0:y1, x0:x1] = rng.integers(0, 256, 3)
    return image


GENERATORS = {"document": document, "chart": chart, "noise": noise, "gradient": gradient, "blocks": blocks}


def generated(count_per_kind: int, seed: int) -> Iterator[CorpusItem]:
    rng = np.random.default_rng(seed)
    for kind, make in GENERATORS.items():
        for i in range(count_per_kind):
            yield CorpusItem(kind, f"{kind}-{i}", png_bytes(np.clip(make(rng), 0, 255)))


# --- shipped in packages --------------------------------------------------------------------------------------
SKIMAGE_PICTURES = (
    "astronaut", "brick", "camera", "cat", "cell", "checkerboard", "chelsea", "clock", "coffee", "coins",
    "colorwheel", "eagle", "grass", "gravel", "horse", "hubble_deep_field", "immunohistochemistry", "logo",
    "microaneurysms", "moon", "page", "retina", "rocket", "shepp_logan_phantom", "text",
)  # fmt: skip


def _package_pictures() -> Iterator[tuple[str, np.ndarray]]:
    import skimage.data
    from sklearn.datasets import load_sample_images

    for name in SKIMAGE_PICTURES:
        try:
            picture = np.asarray(getattr(skimage.data, name)())
        except Exception:
            continue
        if picture.dtype != np.uint8:
            picture = picture.astype(np.float64)
            picture = (255 * (picture - picture.min()) / (np.ptp(picture) + 1e-9)).astype(np.uint8)
        yield f"skimage-{name}", picture[..., :3] if picture.ndim == 3 else picture
    for i, picture in enumerate(load_sample_images().images):
        yield f"sklearn-sample-{i}", picture


def _variants(picture: np.ndarray, rng: np.random.Generator) -> Iterator[tuple[str, np.ndarray]]:
    yield "full", picture
    if picture.ndim == 3:
        yield "gray", picture.mean(axis=2)
    h, w = picture.shape[:2]
    for i in range(2):
        ch, cw = int(h * rng.uniform(0.4, 0.7)), int(w * rng.uniform(0.4, 0.7))
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        yield f"crop{i}", picture[y : y + ch, x : x + cw]


def packaged(seed: int) -> Iterator[CorpusItem]:
    rng = np.random.default_rng(seed)
    for name, picture in _package_pictures():
        for variant, pixels in _variants(picture, rng):
            yield CorpusItem("photo", f"{name}-{variant}", png_bytes(pixels))
    from pydicom.data import get_testdata_file

    for name in ("CT_small.dcm", "MR_small.dcm", "emri_small.dcm", "SC_rgb.dcm", "US1_UNCR.dcm"):
        path = get_testdata_file(name)
        if path is not None:
            yield CorpusItem("dicom_not_chest", name, Path(path).read_bytes())


# --- transformed validation X-rays ----------------------------------------------------------------------------
def transformed_xrays(images: np.ndarray, seed: int) -> Iterator[CorpusItem]:
    """`images`: (N, H, W) uint8 clean validation X-rays."""
    rng = np.random.default_rng(seed)
    for i, gray in enumerate(images):
        yield CorpusItem("clean_xray", f"val-{i}", png_bytes(gray))
        for quarter_turns in (1, 2, 3):
            yield CorpusItem(f"rotated_{90 * quarter_turns}", f"val-{i}", png_bytes(np.rot90(gray, quarter_turns)))
        yield CorpusItem("inverted", f"val-{i}", png_bytes(255 - gray))
        h, w = gray.shape
        keep = rng.uniform(0.25, 0.4)
        y, x = int(rng.integers(0, int(h * (1 - keep)))), int(rng.integers(0, int(w * (1 - keep))))
        yield CorpusItem("cropped", f"val-{i}", png_bytes(gray[y : y + int(h * keep), x : x + int(w * keep)]))
        tint = rng.uniform(0.3, 1.0, 3)
        yield CorpusItem("colourised", f"val-{i}", png_bytes(gray[..., None] * tint[None, None, :]))
