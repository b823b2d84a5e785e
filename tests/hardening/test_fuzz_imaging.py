"""Property-based fuzzing of the one preprocessing path: `decode_image` + `to_model_input`.

Whatever the bytes, the only exception allowed out is `ImageInputError` (and its subclasses, which the API
turns into 4xx); when decoding succeeds, the model input is (H, W, 3) float32 within [0, 255].
Default: a few dozen examples per test. Long run: HYPOTHESIS_PROFILE=long python -m pytest tests/hardening/test_fuzz_imaging.py
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from PIL import Image

from pneumonia.imaging import ImageInputError, decode_image, to_model_input
from tests.hardening import corpus

# decoder warnings are silenced by pneumonia.imaging, but pytest resets warning filters around each test
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
MAX_PIXELS = 4_000_000  # small enough that a mutated header cannot make the fuzzer allocate gigabytes
SIZES = st.tuples(st.integers(1, 96), st.integers(1, 96))


def check(data: bytes, size: tuple[int, int]) -> None:
    try:
        image = decode_image(data, max_pixels=MAX_PIXELS)
    except ImageInputError as exc:
        assert 400 <= exc.status_code < 500 and exc.code and exc.message
        return
    assert image.pixels.dtype == np.uint8 and image.pixels.ndim == 2
    assert image.source_format in {"JPEG", "PNG", "DICOM"}
    batch = to_model_input(image, size)
    assert batch.shape == (*size, 3) and batch.dtype == np.float32
    assert np.isfinite(batch).all() and batch.min() >= 0.0 and batch.max() <= 255.0


@lru_cache
def seeds() -> dict[str, bytes]:
    gray = Image.fromarray(corpus.xray(48))
    exif = Image.Exif()
    exif[0x0112] = 6
    return {
        "png": corpus.encode(gray, "PNG"),
        "png16": corpus.encode(Image.fromarray(np.asarray(gray, dtype=np.uint16) * 257), "PNG"),
        "png_palette": corpus.encode(gray.convert("P"), "PNG", transparency=0),
        "jpeg": corpus.encode(gray, "JPEG", quality=80),
        "jpeg_exif": corpus.encode(gray, "JPEG", exif=exif.tobytes()),
        "jpeg_progressive": corpus.encode(gray.convert("CMYK"), "JPEG", progressive=True),
        "dicom": corpus.dicom_bytes(),
        "dicom_mono1": corpus.dicom_bytes(photometric="MONOCHROME1"),
    }


@st.composite
def mutated(draw) -> bytes:
    """A valid seed with a few byte flips, overwrites, insertions, deletions or a truncation."""
    data = bytearray(seeds()[draw(st.sampled_from(sorted(seeds())))])
    for _ in range(draw(st.integers(1, 6))):
        if not data:
            break
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "splice_int"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            data[at] = draw(st.sampled_from([0x00, 0xFF, 0x7F, 0x80, draw(st.integers(0, 255))]))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 64))]
        elif op == "truncate":
            del data[at:]
        else:  # overwrite 2 or 4 bytes with an extreme integer (lengths, dimensions, tags)
            width = draw(st.sampled_from([2, 4]))
            value = draw(st.sampled_from([0, 1, 2**15, 2**16 - 1, 2**31 - 1, 2**32 - 1]))
            data[at : at + width] = (value % (1 << (8 * width))).to_bytes(
                width, draw(st.sampled_from(["big", "little"]))
            )
    return bytes(data)


@given(data=st.binary(max_size=4096), size=SIZES)
@example(data=b"", size=(32, 32))
@example(data=b"\x89PNG\r\n\x1a\n", size=(32, 32))
@example(data=b"\xff\xd8\xff", size=(32, 32))
@example(data=b"\0" * 128 + b"DICM", size=(32, 32))
def test_arbitrary_bytes(data, size):
    check(data, size)


@given(data=st.one_of(st.just(b"\x89PNG\r\n\x1a\n"), st.just(b"\xff\xd8\xff\xe0"), st.just(b"\0" * 128 + b"DICM")).flatmap(
    lambda magic: st.binary(max_size=2048).map(lambda tail: magic + tail)), size=SIZES)  # fmt: skip
def test_magic_followed_by_random_bytes(data, size):
    check(data, size)


@given(data=mutated(), size=SIZES)
def test_mutated_valid_images(data, size):
    check(data, size)


@pytest.mark.parametrize("name", sorted(seeds()))
def test_seeds_decode(name):
    image = decode_image(seeds()[name])
    assert image.pixels.shape[0] >= 32 and to_model_input(image, (32, 32)).shape == (
        32,
        32,
        3,
    )
