"""Hostile callers against the API-key check of a real uvicorn server (app/api/auth.py, app/keys.py).

Empty and malformed `Authorization` headers, a huge one, unicode and control bytes in the token (sent as raw
bytes, below any client library's checks), the stored digest presented as a token, tokens in the URL, a flood
of wrong keys, and the keys file rewritten, replaced, broken and removed while requests keep coming. Every
answer must be a 4xx in the JSON envelope (or uvicorn's own 400 for bytes HTTP forbids), never a 5xx, never
the token echoed; the server must stay up. An ONNX-only bundle (no model.keras) keeps start-up to seconds.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import socket
import threading
import time
from urllib.parse import urlsplit

import httpx
import pytest

from app.api.auth import WRONG_KEY
from app.keys import keys_file_line
from pneumonia.bundle import KERAS_FILENAME
from tests.support import copy_bundle

TOKEN = "tok-" + os.urandom(16).hex()
SPARE = "tok-spare-" + os.urandom(16).hex()


@pytest.fixture(scope="module")
def keyed(start_server, tiny_bundle, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("hostile")
    bundle = copy_bundle(tiny_bundle, workdir / "bundle")
    (bundle / KERAS_FILENAME).unlink()  # ONNX only: /predict works, no TensorFlow to start
    keys = workdir / "api-keys"
    keys.write_text(keys_file_line("main", TOKEN) + "\n")
    server = start_server(bundle, PNEUMONIA_API_KEYS_FILE=str(keys), PNEUMONIA_LOG_LEVEL="DEBUG")
    return server, keys


def raw_request(base_url: str, header_lines: list[bytes], path: bytes = b"/model") -> tuple[int, bytes]:
    """One HTTP/1.1 request written byte for byte; the status code and the whole response."""
    parts = urlsplit(base_url)
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        sock.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + b"".join(
            line + b"\r\n" for line in header_lines) + b"\r\n")  # fmt: skip
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    response = b"".join(chunks)
    return int(response.split(b" ", 2)[1]), response


def assert_refused(status: int, response: bytes, *secrets: bytes) -> None:
    assert 400 <= status < 500, response[:500]
    head, _, body = response.partition(b"\r\n\r\n")
    if status == 401:
        assert b"www-authenticate: Bearer\r\n" in head.lower().replace(b"bearer", b"Bearer")
        assert json.loads(body)["error"]["code"] == "unauthorized"
    for secret in secrets:
        assert secret not in response


@pytest.mark.parametrize(
    "header",
    [
        b"Authorization: Bearer",
        b"Authorization: Bearer ",
        b"Authorization: Bearer      ",
        b"Authorization: bearer",
        b"Authorization:",
        b"Authorization: Basic dXNlcjpwYXNz",
        b"Authorization: Token " + TOKEN.encode(),
        b"Authorization: Bearer" + TOKEN.encode(),  # no space: not the Bearer scheme
        b"Authorization: Bearer " + TOKEN.encode() + b" " + TOKEN.encode(),
        b"Authorization: Bearer " + TOKEN[:-1].encode(),
        b"Authorization: Bearer " + hashlib.sha256(TOKEN.encode()).hexdigest().encode(),  # the stored digest
        b"Authorization: Bearer " + keys_file_line("main", TOKEN).encode(),  # the whole keys-file line
    ],
)
def test_empty_malformed_and_near_miss_bearer_headers_get_401(keyed, header):
    server, _ = keyed
    status, response = raw_request(server.base_url, [header])
    assert status == 401
    assert_refused(status, response, TOKEN.encode()[4:])


@pytest.mark.parametrize("size", [8 * 1024, 64 * 1024, 1024 * 1024, 16 * 1024 * 1024])
def test_a_huge_authorization_header_reaches_the_key_check_and_gets_401_quickly_never_echoed(keyed, size):
    """What the server really does with a huge header. uvicorn parses HTTP with httptools when it is installed
    (constraints.txt pins it, so the image and the tests run it), and httptools sets no limit on a header's size:
    there is no over-limit rejection (no 400 or 431 from the server) at any size, up to 16 MiB here. Every such
    token reaches the key check, which refuses it without hashing it (over app.keys.MAX_TOKEN_BYTES) with the
    wrong-key 401, not the missing-key one. A deployment that wants a header limit sets it in its proxy."""
    assert importlib.util.find_spec("httptools") is not None  # the parser this test describes
    server, _ = keyed
    marker = os.urandom(8).hex().encode()
    started = time.monotonic()
    status, response = raw_request(server.base_url, [b"Authorization: Bearer " + marker + b"A" * size])
    assert time.monotonic() - started < 10
    assert status == 401, response[:300]
    assert_refused(status, response, marker)
    assert json.loads(response.partition(b"\r\n\r\n")[2])["error"]["message"] == WRONG_KEY
    assert marker.decode() not in server.log()
    assert httpx.get(f"{server.base_url}/health/live", timeout=10).status_code == 200


@pytest.mark.parametrize(
    "token",
    [
        "tökén".encode(),  # UTF-8
        "tökén".encode("latin-1"),
        "ключ-🔑".encode(),
        TOKEN.encode() + "é".encode(),  # the right key with a unicode tail
        "\u202etok".encode(),  # a right-to-left override
        b"\xff\xfe\xfd",
    ],
)
def test_unicode_and_non_ascii_bytes_in_the_token_get_401_not_500(keyed, token):
    server, _ = keyed
    status, response = raw_request(server.base_url, [b"Authorization: Bearer " + token])
    assert status == 401, response[:400]
    assert_refused(status, response, token)


@pytest.mark.parametrize("token", [b"a\x00b", b"a\rb", b"a\x7fb"])
def test_control_bytes_in_the_header_never_reach_the_app(keyed, token):
    server, _ = keyed
    status, response = raw_request(server.base_url, [b"Authorization: Bearer " + token])
    assert status in (400, 401), response[:400]  # uvicorn's parser refuses what HTTP forbids
    assert httpx.get(f"{server.base_url}/health/live", timeout=10).status_code == 200


def test_a_unicode_token_in_the_keys_file_matches_only_its_exact_utf8_bytes(keyed):
    """A key made outside `app.keys new` may hold non-ASCII: its digest is of the UTF-8 bytes, and those
    bytes (sent raw) are accepted; the same text in another encoding, or normalised differently, is not."""
    server, keys = keyed
    original = keys.read_text()
    unicode_token = "schlüssel-ключ-" + os.urandom(4).hex()
    keys.write_text(original + keys_file_line("unicode", unicode_token) + "\n")
    try:
        ok, _ = raw_request(server.base_url, [b"Authorization: Bearer " + unicode_token.encode("utf-8")])
        assert ok == 200
        decomposed = unicode_token.replace("ü", "u\u0308")  # NFD: looks the same, other bytes
        for wrong in (decomposed.encode("utf-8"), unicode_token.encode("utf-16-le")[:64]):
            status, response = raw_request(server.base_url, [b"Authorization: Bearer " + wrong])
            assert_refused(status, response, wrong)
    finally:
        keys.write_text(original)


def test_tokens_in_the_url_are_refused_in_any_spelling(keyed):
    server, _ = keyed
    for query in ("token", "access_token", "ACCESS_TOKEN", "api_key", "api-key", "apikey", "key", "bearer"):
        response = httpx.get(f"{server.base_url}/model?{query}={TOKEN}", headers={"Authorization": f"Bearer {TOKEN}"})
        assert response.status_code == 400 and response.json()["error"]["code"] == "token_in_query", query
        assert TOKEN not in response.text
    # uvicorn's own access log writes the query string: the credential's value is redacted there
    log = server.log()
    assert TOKEN not in log and "/model?access_token=REDACTED" in log


def test_a_flood_of_wrong_keys_changes_nothing(keyed):
    server, _ = keyed
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        statuses = {
            client.get("/model", headers={"Authorization": f"Bearer guess-{i}"}).status_code for i in range(300)
        }
        assert statuses == {401}
        assert client.get("/model", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert server.process.poll() is None and "Traceback" not in server.log()


def test_the_keys_file_changing_while_requests_run(keyed):
    """Rotation under load: the kept key never fails while the file is rewritten and atomically replaced
    hundreds of times; an added key works at once, a removed one fails at once, a broken line drops only
    itself, a deleted file admits nobody (the probes stay up), and restoring it brings the keys back."""
    server, keys = keyed
    original = keys.read_text()
    stop = threading.Event()
    seen: list[int] = []
    errors: list[BaseException] = []

    def hammer() -> None:
        with httpx.Client(base_url=server.base_url, timeout=30) as client:
            while not stop.is_set():
                try:
                    seen.append(client.get("/model", headers={"Authorization": f"Bearer {TOKEN}"}).status_code)
                except BaseException as exc:
                    errors.append(exc)

    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        # in place, then by rename (a new inode), alternately; the main key always kept. At least 200 rewrites and
        # until the callers have made 60 requests (a loaded machine answers fewer per rewrite), within 3 minutes.
        deadline = time.monotonic() + 180
        i = 0
        while i < 200 or (len(seen) <= 60 and time.monotonic() < deadline):
            i += 1
            content = original + keys_file_line(f"k{i}", f"tok-{i}") + "\n"
            if i % 2:
                keys.write_text(content)
            else:
                (keys.parent / "api-keys.tmp").write_text(content)
                os.replace(keys.parent / "api-keys.tmp", keys)
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    assert not errors and len(seen) > 50 and set(seen) == {200}, (errors[:3], sorted(set(seen)))

    with httpx.Client(base_url=server.base_url, timeout=30) as client:

        def status(token: str) -> int:
            return client.get("/model", headers={"Authorization": f"Bearer {token}"}).status_code

        keys.write_text(original + keys_file_line("spare", SPARE) + "\n")
        assert status(SPARE) == 200 and status("tok-199") == 401  # added and removed at once
        keys.write_text("spare:" + SPARE + "\n" + original)  # a pasted token: that line is dropped
        assert status(TOKEN) == 200 and status(SPARE) == 401
        keys.unlink()
        assert status(TOKEN) == 401  # fail closed
        assert client.get("/health/ready").status_code == 200
        keys.write_text(original)
        assert status(TOKEN) == 200
    log = server.log()
    assert "API keys reloaded" in log and "line 1" in log
    assert SPARE not in log and TOKEN not in log  # the pasted token is named by its line, never shown
    assert "Traceback" not in log
