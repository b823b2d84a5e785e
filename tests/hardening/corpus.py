"""A corpus of hostile and broken uploads, generated on the fly: one small function per case.

Every generator returns a `Case`: the request (multipart `files`, or a raw `content` body with `headers`)
and the expected outcome (`Expected`: HTTP status, error code, and a word the error message must contain so
that the message names the problem). Valid-but-unusual images expect 200. `CASES` lists them all; the same
case is sent to /predict and /explain by tests/hardening/test_corpus.py.

Status conventions (see docs/operating.md):
    400  the multipart body is unusable (no boundary, unparsable, empty file, more than one file)
    413  the request body is over the upload limit, or the image declares too many pixels
    415  neither multipart/form-data nor a raw image/jpeg, image/png or application/dicom body, or the bytes are not a JPEG/PNG/DICOM image
    422  no `file` field; a damaged/truncated image; unusable dimensions (too small, extreme aspect ratio)
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from PIL import Image

from tests.media import dicom, png_bomb, png_chunk

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "samples"
BOUNDARY = "hardening-b0undary"
UPLOAD_LIMIT = 2 * 1024 * 1024  # the corpus server runs with PNEUMONIA_MAX_UPLOAD_BYTES set to this
SHARED_CACHE_SIZE = 16  # the shared server's prediction cache: small, so the load test fills it in warm-up
SECRET_NAME_FRAGMENT = "PATIENT-ROE-JANE"  # distinctive: must never reach the logs


@dataclass(frozen=True)
class Expected:
    status: int
    code: str | None = None  # error.code for 4xx
    mention: str | None = None  # a substring (case-insensitive) the error message must contain


@dataclass
class Case:
    name: str
    expected: Expected
    files: Any = None  # httpx `files=` (multipart built by httpx)
    content: Any = None  # raw body: bytes or an iterator of bytes (sent chunked, no Content-Length)
    headers: dict[str, str] = field(default_factory=dict)

    def request_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"headers": self.headers}
        if self.files is not None:
            kwargs["files"] = self.files
        if self.content is not None:
            kwargs["content"] = self.content
        return kwargs


OK = Expected(200)
UNSUPPORTED = Expected(415, "unsupported_format", "jpeg, png or dicom")
CORRUPT = Expected(422, "corrupt_image", "damaged")
TOO_MANY_PIXELS = Expected(413, "too_many_pixels", "pixels")
BAD_DIMENSIONS = Expected(422, "bad_dimensions", "pixels")
TOO_LARGE = Expected(413, "upload_too_large", "limit")

CASES: list[Callable[[], Case]] = []


def case(fn: Callable[[], Case]) -> Callable[[], Case]:
    CASES.append(fn)
    return fn


# --- building blocks ---------------------------------------------------------------------------------------
def xray(side: int = 256) -> np.ndarray:
    """A committed sample X-ray as uint8 grayscale, resized to side x side."""
    path = min((SAMPLES / "NORMAL").glob("*.jpeg"))
    return np.asarray(Image.open(path).convert("L").resize((side, side)), dtype=np.uint8)


def encode(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def jpeg_bytes(side: int = 256) -> bytes:
    return encode(Image.fromarray(xray(side)), "JPEG", quality=90)


def png_bytes(side: int = 256) -> bytes:
    return encode(Image.fromarray(xray(side)), "PNG")


def jpeg_claiming(width: int, height: int) -> bytes:
    """A real small JPEG whose SOF0 frame header is patched to claim width x height."""
    data = bytearray(jpeg_bytes(64))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def upload(name: str, data: bytes, content_type: str = "application/octet-stream") -> dict[str, Any]:
    return {"file": (name, data, content_type)}


def dicom_bytes(*, photometric: str = "MONOCHROME2", with_pixels: bool = True) -> bytes:
    """A sample X-ray as a 12-bit DICOM (rescale -1024, wide window); optionally without pixel data."""
    stored = xray(128).astype(np.uint16) * 16  # 12-bit values
    if photometric == "MONOCHROME1":
        stored = 4095 - stored
    data = dicom(stored, photometric, slope=1.0, intercept=-1024.0, center=0.0, width=4000.0)
    if with_pixels:
        return data
    dataset = pydicom.dcmread(io.BytesIO(data))
    del dataset.PixelData
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def raw_multipart(*parts: bytes) -> bytes:
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


def part(
    name: str,
    data: bytes,
    filename: str | None = "x.png",
    content_type: str = "image/png",
) -> bytes:
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
    return (
        f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\nContent-Type: {content_type}\r\n\r\n".encode()
        + data
        + b"\r\n"
    )


MULTIPART_HEADERS = {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}


# --- the request itself is wrong ---------------------------------------------------------------------------
@case
def empty_body() -> Case:
    return Case(
        "empty body",
        Expected(422, "missing_file", "'file'"),
        content=b"",
        headers=MULTIPART_HEADERS,
    )


@case
def empty_file() -> Case:
    return Case(
        "empty file",
        Expected(400, "empty_file", "empty"),
        files=upload("empty.png", b""),
    )


@case
def no_file_field() -> Case:
    return Case(
        "no file field",
        Expected(422, "missing_file", "'file'"),
        files={"image": ("x.jpeg", jpeg_bytes(64))},
    )


@case
def two_files() -> Case:
    body = raw_multipart(part("file", png_bytes(64)), part("file", png_bytes(64)))
    return Case(
        "two files",
        Expected(400, "too_many_files", "exactly one"),
        content=body,
        headers=MULTIPART_HEADERS,
    )


@case
def no_boundary() -> Case:
    return Case("multipart without boundary", Expected(400, "malformed_multipart", "boundary"), content=b"x" * 10,
                headers={"content-type": "multipart/form-data"})  # fmt: skip


@case
def garbage_multipart() -> Case:
    return Case("unparsable multipart", Expected(400, "malformed_multipart", "parsed"),
                content=b"this is not a multipart body at all\r\n" * 4, headers=MULTIPART_HEADERS)  # fmt: skip


@case
def json_body() -> Case:
    return Case("application/json body", Expected(415, "unsupported_media_type", "multipart/form-data"),
                content=b'{"file": "aGVsbG8="}', headers={"content-type": "application/json"})  # fmt: skip


@case
def raw_image_body() -> Case:
    return Case("raw image/jpeg body", OK, content=jpeg_bytes(64), headers={"content-type": "image/jpeg"})


@case
def oversize_with_content_length() -> Case:
    return Case(
        "oversize, Content-Length",
        TOO_LARGE,
        files=upload("big.png", b"\0" * (UPLOAD_LIMIT + 4096)),
    )


@case
def oversize_chunked() -> Case:
    def body() -> Iterator[bytes]:
        yield f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="big.png"\r\n\r\n'.encode()
        for _ in range(UPLOAD_LIMIT // 65536 + 4):
            yield b"\0" * 65536
        yield f"\r\n--{BOUNDARY}--\r\n".encode()

    return Case(
        "oversize, chunked (no Content-Length)",
        TOO_LARGE,
        content=body(),
        headers=MULTIPART_HEADERS,
    )


# --- not an image we accept --------------------------------------------------------------------------------
@case
def text_as_png() -> Case:
    return Case(
        "text named .png",
        UNSUPPORTED,
        files=upload("x.png", b"just some plain text, not pixels\n" * 20),
    )


@case
def html_as_png() -> Case:
    return Case(
        "HTML named .png",
        UNSUPPORTED,
        files=upload(
            "x.png",
            b"<!doctype html><html><body><img src=x onerror=alert(1)></body></html>",
        ),
    )


@case
def json_as_png() -> Case:
    return Case(
        "JSON named .png",
        UNSUPPORTED,
        files=upload("x.png", b'{"image": "xray", "pixels": [1, 2, 3]}'),
    )


@case
def pdf_as_png() -> Case:
    return Case(
        "PDF named .png",
        UNSUPPORTED,
        files=upload("x.png", b"%PDF-1.7\n1 0 obj\n<< /Type /Catalog >>\nendobj\n%%EOF\n"),
    )


@case
def zip_as_png() -> Case:
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("xray.png", png_bytes(64))
    return Case("ZIP named .png", UNSUPPORTED, files=upload("x.png", buffer.getvalue()))


@case
def svg() -> Case:
    data = b'<svg xmlns="http://www.w3.org/2000/svg" width="512" height="512"><rect width="512" height="512"/></svg>'
    return Case("SVG", UNSUPPORTED, files=upload("x.svg", data, "image/svg+xml"))


@case
def animated_gif() -> Case:
    frames = [Image.fromarray(xray(128)), Image.fromarray(255 - xray(128))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return Case(
        "animated GIF",
        Expected(415, "unsupported_format", "gif"),
        files=upload("x.gif", data, "image/gif"),
    )


@case
def tiff() -> Case:
    data = encode(Image.fromarray(xray(128)), "TIFF")
    return Case(
        "TIFF",
        Expected(415, "unsupported_format", "tiff"),
        files=upload("x.tiff", data, "image/tiff"),
    )


@case
def bmp() -> Case:
    data = encode(Image.fromarray(xray(128)), "BMP")
    return Case(
        "BMP",
        Expected(415, "unsupported_format", "bmp"),
        files=upload("x.bmp", data, "image/bmp"),
    )


@case
def webp() -> Case:
    data = encode(Image.fromarray(xray(128)), "WEBP")
    return Case(
        "WebP",
        Expected(415, "unsupported_format", "webp"),
        files=upload("x.webp", data, "image/webp"),
    )


# --- damaged or absurd JPEG/PNG/DICOM ----------------------------------------------------------------------
@case
def truncated_jpeg() -> Case:
    data = jpeg_bytes(256)
    return Case("truncated JPEG", CORRUPT, files=upload("x.jpeg", data[: len(data) // 3]))


@case
def truncated_png() -> Case:
    data = png_bytes(256)
    return Case("truncated PNG", CORRUPT, files=upload("x.png", data[: len(data) // 2]))


@case
def png_bad_crc() -> Case:
    data = bytearray(png_bytes(128))
    idat = data.index(b"IDAT")
    length = struct.unpack(">I", data[idat - 4 : idat])[0]
    data[idat + 4 + length] ^= 0xFF  # first CRC byte of the first IDAT chunk
    return Case("PNG with a corrupt chunk CRC", CORRUPT, files=upload("x.png", bytes(data)))


@case
def png_bad_header_crc() -> Case:
    data = bytearray(png_bytes(128))
    data[8 + 8 + 13] ^= 0xFF  # IHDR CRC
    return Case("PNG with a corrupt IHDR CRC", CORRUPT, files=upload("x.png", bytes(data)))


@case
def png_text_bomb() -> Case:
    """A valid PNG carrying a zTXt chunk that inflates to 64 MiB (Pillow caps text chunks)."""
    data = png_bytes(64)
    ztxt = png_chunk(b"zTXt", b"Comment\0\0" + zlib.compress(b"A" * (64 * 1024 * 1024), 9))
    iend = data.rindex(b"IEND") - 4
    head = data.index(b"IDAT") - 4
    return Case(
        "PNG with a zTXt decompression bomb",
        CORRUPT,
        files=upload("x.png", data[:head] + ztxt + data[head:iend] + data[iend:]),
    )


@case
def png_50k() -> Case:
    return Case(
        "PNG claiming 50000x50000",
        TOO_MANY_PIXELS,
        files=upload("x.png", png_bomb(50_000, 50_000)),
    )


@case
def jpeg_50k() -> Case:
    return Case(
        "JPEG claiming 50000x50000",
        TOO_MANY_PIXELS,
        files=upload("x.jpeg", jpeg_claiming(50_000, 50_000)),
    )


@case
def one_pixel() -> Case:
    return Case(
        "1x1 image",
        Expected(422, "bad_dimensions", "at least 32"),
        files=upload("x.png", encode(Image.new("L", (1, 1), 128), "PNG")),
    )


@case
def tall_10x4000() -> Case:
    data = encode(Image.new("L", (10, 4000), 128), "PNG")
    return Case("10x4000 image", BAD_DIMENSIONS, files=upload("x.png", data))


@case
def extreme_aspect() -> Case:
    data = encode(Image.new("L", (40, 4000), 128), "PNG")
    return Case(
        "40x4000 (aspect 100:1)",
        Expected(422, "bad_dimensions", "aspect ratio"),
        files=upload("x.png", data),
    )


@case
def dicom_magic_garbage() -> Case:
    data = b"\0" * 128 + b"DICM" + bytes(range(256)) * 4
    return Case(
        "DICOM preamble followed by garbage",
        Expected(422, "corrupt_image", "dicom"),
        files=upload("x.dcm", data, "application/dicom"),
    )


@case
def dicom_without_pixels() -> Case:
    return Case("DICOM without pixel data", Expected(422, "corrupt_image", "pixel data"),
                files=upload("x.dcm", dicom_bytes(with_pixels=False), "application/dicom"))  # fmt: skip


# --- unusual but valid: must work --------------------------------------------------------------------------
@case
def cmyk_jpeg() -> Case:
    data = encode(Image.fromarray(xray(256)).convert("CMYK"), "JPEG", quality=90)
    return Case("CMYK JPEG", OK, files=upload("x.jpeg", data, "image/jpeg"))


@case
def png_16bit() -> Case:
    data = encode(Image.fromarray(xray(256).astype(np.uint16) * 257), "PNG")
    return Case("16-bit PNG", OK, files=upload("x.png", data, "image/png"))


@case
def palette_png_with_transparency() -> Case:
    image = Image.fromarray(xray(256)).convert("P")
    data = encode(image, "PNG", transparency=0)
    assert Image.open(io.BytesIO(data)).info.get("transparency") is not None
    return Case("palette PNG with transparency", OK, files=upload("x.png", data, "image/png"))


@case
def rgba_png() -> Case:
    gray = Image.fromarray(xray(256))
    data = encode(Image.merge("RGBA", (gray, gray, gray, Image.new("L", gray.size, 200))), "PNG")
    return Case("RGBA PNG with partial alpha", OK, files=upload("x.png", data, "image/png"))


@case
def exif_rotated_jpeg() -> Case:
    image = Image.fromarray(xray(256)[:, :200])
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 CW
    data = encode(image, "JPEG", exif=exif.tobytes())
    return Case("JPEG with EXIF orientation", OK, files=upload("x.jpeg", data, "image/jpeg"))


@case
def dicom_monochrome1() -> Case:
    return Case(
        "DICOM MONOCHROME1",
        OK,
        files=upload("x.dcm", dicom_bytes(photometric="MONOCHROME1"), "application/dicom"),
    )


@case
def dicom_monochrome2() -> Case:
    return Case(
        "DICOM MONOCHROME2",
        OK,
        files=upload("x.dcm", dicom_bytes(), "application/dicom"),
    )


@case
def path_traversal_name() -> Case:
    return Case(
        "file name ../../etc/passwd.png",
        OK,
        files=upload("../../etc/passwd.png", png_bytes(), "image/png"),
    )


@case
def non_ascii_name() -> Case:
    return Case(
        "file name x-ray-ñ-東京.png",
        OK,
        files=upload("x-ray-ñ-東京.png", png_bytes(), "image/png"),
    )


@case
def injected_name_parameter() -> Case:
    """An unescaped quote in the file name smuggles a second name= parameter: the part is not `file`."""
    name = f'{SECRET_NAME_FRAGMENT}"; name="other.png'
    body = raw_multipart(part("file", jpeg_bytes(), filename=name, content_type="image/jpeg"))
    return Case("name= injected through a file name", Expected(422, "missing_file", "'file'"), content=body,
                headers=MULTIPART_HEADERS)  # fmt: skip


@case
def quotes_in_name() -> Case:
    return Case("quotes and semicolons in the file name", OK,
                files=upload(f'{SECRET_NAME_FRAGMENT}"; name="x\r\nX-Injected: 1.png', png_bytes(), "image/png"))  # fmt: skip


@case
def text_plain_part() -> Case:
    return Case(
        "JPEG sent as a text/plain part",
        OK,
        files=upload(f"{SECRET_NAME_FRAGMENT}.txt", jpeg_bytes(), "text/plain"),
    )


@case
def part_without_filename() -> Case:
    body = raw_multipart(part("file", png_bytes(), filename=None, content_type="application/octet-stream"))
    return Case("file part without a filename", OK, content=body, headers=MULTIPART_HEADERS)


@case
def extra_fields() -> Case:
    body = raw_multipart(
        part("comment", b"hello", filename=None, content_type="text/plain"),
        part("file", png_bytes()),
    )
    return Case("extra form fields besides file", OK, content=body, headers=MULTIPART_HEADERS)
