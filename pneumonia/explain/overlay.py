"""Drawing a map over an image: the colour scale, the blend, a labelled colour bar beside it, PNG encoding.

Pure functions of arrays, free of TensorFlow and of any web framework:

    rgb = overlay(gray_uint8, heatmap)     # (H, W, 3) uint8 at the image's own size
    rgb = add_colour_bar(rgb)              # (H, W + colour_bar_width(H), 3): the scale in a strip to the right
    png = encode_png(rgb)

The colour bar sits in a black strip added to the right of the image, never over it: a bar drawn inside the
image covered the lateral chest wall, where the evidence often is (issue 20). A client that wants the image
alone keeps the PNG's left `width - colour_bar_width(height)` columns (the page at `/` does, and draws its own
legend beside the image; app/static/app.js repeats `colour_bar_width`).

What the colours mean (also in docs/explanations.md and the /explain OpenAPI description): the map is scaled per
image so that its largest value is 1. Blue (0) marks regions with no evidence for the explained class,
red (1) the strongest evidence in THIS image; colours are relative within an image, not comparable
between images, and say nothing about lesions.
"""

from __future__ import annotations

import struct
import zlib
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# The colour bar's strip: max(COLOUR_BAR_MIN_WIDTH, H // COLOUR_BAR_HEIGHT_DIVISOR) px wide beside an image H px
# tall (colour_bar_width; COLOUR_SCALE states the formula for API clients, app/static/app.js repeats it).
COLOUR_BAR_MIN_WIDTH = 16
COLOUR_BAR_HEIGHT_DIVISOR = 10

COLOUR_SCALE = (
    "jet colour scale over the map's 0..1 values: blue = 0 (no evidence for the explained class), "
    "cyan/green = 0.25-0.5, yellow = 0.75, red = 1 (strongest evidence in this image; the map is scaled so "
    "its maximum is 1, so colours are relative within one image). Blended over the X-ray at 40% opacity. The colour "
    "bar is drawn in a black strip to the right of the image, outside it, covering none of it: the strip is "
    f"max({COLOUR_BAR_MIN_WIDTH}, H // {COLOUR_BAR_HEIGHT_DIVISOR}) px wide for an overlay H px tall, so the image "
    "is the PNG's left (width - strip) columns."
)


def _jet_lut() -> np.ndarray:
    """A 256-entry 'jet'-like colormap (blue -> cyan -> yellow -> red) as uint8 (256, 3)."""
    x = np.linspace(0.0, 1.0, 256)
    red = np.clip(1.5 - np.abs(4.0 * x - 3.0), 0.0, 1.0)
    green = np.clip(1.5 - np.abs(4.0 * x - 2.0), 0.0, 1.0)
    blue = np.clip(1.5 - np.abs(4.0 * x - 1.0), 0.0, 1.0)
    return np.round(np.stack([red, green, blue], axis=1) * 255.0).astype(np.uint8)


JET = _jet_lut()


def colorize(heatmap: np.ndarray) -> np.ndarray:
    """(H, W) float in [0, 1] -> (H, W, 3) uint8 via the jet LUT."""
    return JET[np.clip(np.round(heatmap * 255.0), 0, 255).astype(np.uint8)]


def overlay(gray: np.ndarray, heatmap: np.ndarray, alpha: float = 0.4) -> np.ndarray:
    """Blend a colour-mapped heatmap over a grayscale image, at the image's size.

    gray: (H, W) uint8; heatmap: (h, w) float in [0, 1] (resized bilinearly to (H, W)); alpha: heatmap weight.
    Returns (H, W, 3) uint8 RGB. Invalid inputs raise ValueError.
    """
    gray = np.asarray(gray)
    heatmap = np.asarray(heatmap)
    if gray.dtype != np.uint8 or gray.ndim != 2 or gray.size == 0:
        raise ValueError(f"gray must be a non-empty 2-D uint8 array, got {gray.dtype} {gray.shape}")
    if heatmap.ndim != 2 or heatmap.size == 0 or not np.issubdtype(heatmap.dtype, np.floating):
        raise ValueError(f"heatmap must be a non-empty 2-D float array, got {heatmap.dtype} {heatmap.shape}")
    if not np.all(np.isfinite(heatmap)):
        raise ValueError("heatmap contains NaN or infinite values")
    if float(heatmap.min()) < 0.0 or float(heatmap.max()) > 1.0:
        raise ValueError(f"heatmap values must lie in [0, 1], got [{heatmap.min():g}, {heatmap.max():g}]")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    height, width = gray.shape
    resized = Image.fromarray(heatmap.astype(np.float32)).resize((width, height), Image.Resampling.BILINEAR)
    colours = Image.fromarray(colorize(np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)))
    # Pillow's blend, (1 - alpha) * image + alpha * colours in C: a third of the time of the numpy float version
    return np.asarray(Image.blend(Image.fromarray(gray).convert("RGB"), colours, alpha))


def colour_bar_width(height: int) -> int:
    """Columns of the strip that `add_colour_bar` adds to the right of an image `height` pixels tall."""
    return max(COLOUR_BAR_MIN_WIDTH, height // COLOUR_BAR_HEIGHT_DIVISOR)


def add_colour_bar(rgb: np.ndarray) -> np.ndarray:
    """`rgb` (H, W, 3) uint8 with a black strip of `colour_bar_width(H)` columns added to its right, holding the
    colour scale: 1 at the top, 0 at the bottom. The image's own pixels are copied unchanged.

    The bar spans the middle half of the height; its labels ("1", "0") stand to its right, drawn only where the
    image is tall enough to hold them legibly (and the bar alone is left out below 8 rows).
    """
    rgb = np.asarray(rgb, dtype=np.uint8)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected (H, W, 3) uint8 RGB, got {rgb.shape}")
    height = rgb.shape[0]
    strip_w = colour_bar_width(height)
    strip = np.zeros((height, strip_w, 3), np.uint8)
    if height >= 8:
        margin = max(2, strip_w // 8)
        bar_w, bar_h = max(3, strip_w // 4), max(4, height // 2)
        top = (height - bar_h) // 2
        strip[top - 1 : top + bar_h + 1, margin - 1 : margin + bar_w + 1] = 96  # a grey frame: reads on black
        strip[top : top + bar_h, margin : margin + bar_w] = colorize(np.linspace(1.0, 0.0, bar_h))[:, None, :]
        if height >= 128:
            image = Image.fromarray(strip)
            draw = ImageDraw.Draw(image)
            font = _label_font(max(10, height // 40))
            x = margin + bar_w + max(3, strip_w // 16)
            for text, y in (("1", top), ("0", top + bar_h)):
                draw.text((x, y), text, fill=(255, 255, 255), font=font, anchor="lm")
            strip = np.asarray(image)
    return np.concatenate([rgb, strip], axis=1)


@lru_cache(maxsize=16)
def _label_font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)  # loading it was a third of the colour bar's drawing time


def encode_png(rgb: np.ndarray) -> bytes:
    """(H, W, 3) uint8 -> an 8-bit RGB PNG: every row with the "Up" filter (its difference from the row above),
    deflated at zlib level 1.

    Written here rather than with Pillow because Pillow tries all five PNG filters on every row and cannot be
    told not to; for a smooth overlay "Up" compresses as well (63 vs 62 KB on a 224 px sample) at half the
    time (1.5 vs 3.0 ms), and encoding was the largest cost of /explain after the map itself.
    """
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.size == 0:
        raise ValueError(f"expected (H, W, 3) uint8 RGB, got {rgb.dtype} {rgb.shape}")
    height, width = rgb.shape[:2]
    rows = rgb.reshape(height, width * 3)
    filtered = np.empty((height, width * 3 + 1), np.uint8)  # each row: filter type byte, then the bytes
    filtered[:, 0] = 2  # "Up"
    filtered[0, 1:] = rows[0]  # the row above the first is zeros
    np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])  # modulo 256, as the PNG spec defines it
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8 bits, truecolour, deflate, no interlace
    return b"".join(
        (b"\x89PNG\r\n\x1a\n", _chunk(b"IHDR", header), _chunk(b"IDAT", zlib.compress(filtered.tobytes(), 1)),
         _chunk(b"IEND", b""))
    )  # fmt: skip


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
