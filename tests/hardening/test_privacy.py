"""Uploads never touch the disk and never reach the logs, checked on a real server at DEBUG log level.

Extends tests/integration/test_http_service.py (TMPDIR stays empty at INFO level; file names absent from the
log) with: DEBUG logging (app and uvicorn), ~50 uploads up to several MB, a scan of the *system* temp dir for
a marker embedded in every upload (other processes share /tmp, so new files are searched for the marker
rather than required to be absent), the server's open file descriptors inspected while an upload is still
streaming in, and the log searched for image magic, base64 of the uploads, the marker and the file names,
including for a malformed DICOM whose parser warnings would quote the file's bytes.
"""

from __future__ import annotations

import base64
import contextlib
import io
import os
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from tests.hardening import corpus
from tests.support import copy_bundle

MARKER = f"HARDENING-{uuid.uuid4().hex}"
NAME = f"{corpus.SECRET_NAME_FRAGMENT}-{uuid.uuid4().hex[:8]}"
UPLOAD_LIMIT = 8 * 1024 * 1024


@pytest.fixture(scope="module")
def spool_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("privacy_tmpdir")


@pytest.fixture(scope="module")
def server(start_server, tiny_bundle, tmp_path_factory, spool_dir):
    bundle = copy_bundle(tiny_bundle, tmp_path_factory.mktemp("bundle") / "bundle")
    return start_server(
        bundle, uvicorn_args=("--log-level", "debug"), TMPDIR=str(spool_dir), PNEUMONIA_LOG_LEVEL="DEBUG",
        PNEUMONIA_MAX_UPLOAD_BYTES=str(UPLOAD_LIMIT),
    )  # fmt: skip


def marked_png(side: int, seed: int, noise: bool) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (side, side), dtype=np.uint8) if noise else corpus.xray(side)
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", MARKER)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", pnginfo=info, compress_level=1)
    return buffer.getvalue()


def marked_jpeg(side: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(corpus.xray(side)).save(buffer, format="JPEG", comment=MARKER.encode())
    return buffer.getvalue()


def marked_bad_dicom() -> bytes:
    """A DICOM whose transfer syntax UID is replaced by the marker: pydicom's warning would quote it."""
    data = corpus.dicom_bytes()
    transfer_syntax = b"1.2.840.10008.1.2.1\x00"  # explicit VR little endian, 20 bytes
    assert transfer_syntax in data
    return data.replace(transfer_syntax, MARKER[:20].encode(), 1)


def snapshot(root: Path) -> dict[str, float]:
    found = {}
    for dirpath, _dirnames, filenames in os.walk(root, onerror=lambda e: None):
        for name in filenames:
            path = os.path.join(dirpath, name)
            with contextlib.suppress(OSError):  # a file that vanished between listing and stat
                found[path] = os.stat(path).st_mtime
    return found


def open_temp_files(pid: int, spool_dir: Path) -> list[str]:
    targets = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if "(deleted)" in target or target.startswith((str(spool_dir), tempfile.gettempdir() + "/tmp")):
            targets.append(target)
    return targets


def test_uploads_never_touch_disk_or_logs(server, spool_dir):
    system_tmp = Path(tempfile.gettempdir())
    uploads: list[bytes] = []
    with httpx.Client(base_url=server.base_url, timeout=120) as client:
        # warm-up: the first /explain traces the Grad-CAM graph (TensorFlow may write generated code to TMPDIR)
        assert client.post("/explain", files={"file": ("warmup.png", corpus.png_bytes(64))}).status_code == 200
        spool_before, system_before = snapshot(spool_dir), snapshot(system_tmp)
        fds_before = open_temp_files(server.process.pid, spool_dir)
        started = time.time()

        # ~50 uploads: small to several MB (noise PNGs do not compress), valid and invalid, both endpoints
        sizes = [64, 256, 512, 1024, 1536, 2048, 2600]
        for i in range(48):
            side = sizes[i % len(sizes)]
            data = marked_png(side, i, noise=side >= 1024) if i % 3 else marked_jpeg(min(side, 1024))
            uploads.append(data)
            endpoint = "/explain" if i % 8 == 0 else "/predict"
            response = client.post(endpoint, files={"file": (f"{NAME}-{i}.png", data, "image/png")})
            assert response.status_code == 200, response.text[:300]
        assert max(len(u) for u in uploads) > 5 * 1024 * 1024
        for bad in (
            marked_bad_dicom(),
            marked_png(256, 99, False)[:5000],
            b"%PDF-1.4 " + MARKER.encode(),
        ):
            uploads.append(bad)
            response = client.post("/predict", files={"file": (f"{NAME}-bad.dcm", bad)})
            assert 400 <= response.status_code < 500, response.text[:300]

        # an upload that is still streaming in: what does the server hold open meanwhile?
        big = marked_png(2600, 7, noise=True)
        held: list[list[str]] = []

        def slow_body():
            head = f'--{corpus.BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{NAME}.png"\r\n\r\n'
            yield head.encode()
            half = len(big) // 2
            yield big[:half]
            time.sleep(1.0)
            held.append(open_temp_files(server.process.pid, spool_dir))
            yield big[half:]
            yield f"\r\n--{corpus.BOUNDARY}--\r\n".encode()

        response = client.post("/predict", content=slow_body(), headers=corpus.MULTIPART_HEADERS)
        assert response.status_code == 200, response.text[:300]

    assert held == [fds_before], f"temp files open while an upload streamed in: {held}"
    assert snapshot(spool_dir) == spool_before, "the server wrote to its TMPDIR while handling uploads"
    changed = [p for p, mtime in snapshot(system_tmp).items() if system_before.get(p) != mtime and mtime >= started - 1]
    leaked = []
    for path in changed:  # other processes share /tmp: search what changed for the uploads' marker
        try:
            with open(path, "rb") as handle:
                if MARKER.encode() in handle.read(64 * 1024 * 1024):
                    leaked.append(path)
        except OSError:
            pass
    assert not leaked, f"upload bytes found on disk: {leaked}"

    log = server.log()
    assert "POST /predict 200" in log  # the access log is on (app and uvicorn run at DEBUG level)
    forbidden = [
        MARKER[:20],
        NAME,
        corpus.SECRET_NAME_FRAGMENT,
        "\x89PNG",
        "\\x89PNG",
        "IHDR",
        "JFIF",
        "DICM",
    ]
    forbidden += [
        base64.b64encode(data[i : i + 24]).decode() for data in uploads for i in (0, 3, 120) if len(data) >= i + 24
    ]
    found = [needle for needle in forbidden if needle in log]
    assert not found, f"upload content or names in the server log: {found[:5]}"
