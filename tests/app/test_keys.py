"""API keys (app/keys.py): the keys file an operator writes, the key ring the service checks tokens against, and
`python -m app.keys`, the command that makes a key."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time

import pytest

import app.keys as keys_module
from app.keys import KeyRing, KeysFileError, keys_file_line, parse_keys
from tests.support import REPO_ROOT


def write(path, *lines: str) -> None:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def test_keys_file_lines_comments_and_blank_lines(tmp_path):
    path = tmp_path / "keys"
    write(path, "# who: sha256(token)", "", keys_file_line("alice", "token-a"), "  " + keys_file_line("bob", "token-b"))
    ring = KeyRing(path).load()
    assert ring.key_ids == ["alice", "bob"]
    assert ring.identify(b"token-a") == "alice" and ring.identify(b"token-b") == "bob"
    for wrong in (b"token-c", b"token-a ", b"TOKEN-A", b"", hashlib.sha256(b"token-a").hexdigest().encode()):
        assert ring.identify(wrong) is None, wrong  # not even the stored digest itself is a token


def test_upper_case_hex_is_accepted(tmp_path):
    path = tmp_path / "keys"
    write(path, keys_file_line("alice", "token-a").upper().replace("ALICE", "alice"))
    assert KeyRing(path).load().identify(b"token-a") == "alice"


@pytest.mark.parametrize(
    "line, why",
    [
        ("alice:t0k3n-pasted-by-mistake", "64 hex digits"),  # the token instead of its digest
        ("alice " + "ab" * 32, "KEY_ID:SHA256_HEX"),
        (":" + "ab" * 32, "KEY_ID:SHA256_HEX"),
        ("al ice:" + "ab" * 32, "KEY_ID:SHA256_HEX"),
        ("alice:" + "ab" * 31, "64 hex digits"),
    ],
)
def test_a_bad_line_stops_start_up_naming_its_number_never_its_content(tmp_path, line, why):
    path = tmp_path / "keys"
    write(path, "# comment", keys_file_line("bob", "token-b"), line)
    with pytest.raises(KeysFileError) as raised:
        KeyRing(path).load()
    message = str(raised.value)
    assert "line 3" in message and why in message
    assert line.split(":")[-1] not in message  # a pasted token is not repeated into the log


def test_duplicates_missing_and_empty_files_are_refused_at_start_up(tmp_path):
    path = tmp_path / "keys"
    write(path, keys_file_line("alice", "a"), keys_file_line("alice", "b"))
    with pytest.raises(KeysFileError, match="line 2: key id 'alice' appears twice"):
        KeyRing(path).load()
    write(path, keys_file_line("alice", "a"), keys_file_line("bob", "a"))
    with pytest.raises(KeysFileError, match="line 2: the same token digest"):
        KeyRing(path).load()
    write(path, "# nothing yet")
    with pytest.raises(KeysFileError, match="has no keys"):
        KeyRing(path).load()
    with pytest.raises(KeysFileError, match="cannot read"):
        KeyRing(tmp_path / "missing").load()


def test_rotation_is_seen_on_the_next_check_without_a_restart(tmp_path):
    path = tmp_path / "keys"
    write(path, keys_file_line("old", "token-old"))
    ring = KeyRing(path).load()
    assert ring.identify(b"token-old") == "old"

    # an editor's save: a new file renamed over the old one (a new inode), as a Kubernetes Secret update does
    replacement = tmp_path / "keys.new"
    write(replacement, keys_file_line("new", "token-new"))
    os.replace(replacement, path)
    assert ring.identify(b"token-new") == "new"
    assert ring.identify(b"token-old") is None  # revoked at once

    # rewritten in place twice within one timestamp tick, same size: still seen (the file is young)
    stat = path.stat()
    write(path, keys_file_line("nex", "token-nex"))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size
    assert ring.identify(b"token-nex") == "nex" and ring.identify(b"token-new") is None


def test_an_old_unchanged_file_is_not_read_again(tmp_path, monkeypatch):
    path = tmp_path / "keys"
    write(path, keys_file_line("alice", "token-a"))
    old = time.time() - 3600
    os.utime(path, (old, old))
    ring = KeyRing(path).load()
    reads = []
    real = keys_module.Path.read_text

    def counted_read(self, *args, **kwargs):
        reads.append(self)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(keys_module.Path, "read_text", counted_read)
    for _ in range(50):
        assert ring.identify(b"token-a") == "alice"
    assert reads == []


def test_on_reload_a_missing_file_leaves_no_valid_key_and_a_bad_line_only_itself(tmp_path, caplog):
    path = tmp_path / "keys"
    write(path, keys_file_line("alice", "token-a"))
    ring = KeyRing(path).load()
    path.unlink()
    assert ring.identify(b"token-a") is None  # fail closed: a vanished keys file admits nobody
    write(path, "alice:pasted-token-by-mistake", keys_file_line("bob", "token-b"))
    assert ring.identify(b"token-b") == "bob"
    assert ring.identify(b"token-a") is None
    assert "line 1" in caplog.text and "pasted-token-by-mistake" not in caplog.text


def test_a_file_caught_mid_write_keeps_the_keys_until_it_settles(tmp_path):
    """An editor saving in place truncates first: for a moment the file is empty. A request then must not be
    refused; a file that stays empty is taken at its word once it is RACY_WINDOW_S old (every key revoked)."""
    path = tmp_path / "keys"
    write(path, keys_file_line("alice", "token-a"))
    ring = KeyRing(path).load()
    path.write_text("")  # truncated, not yet written
    assert ring.identify(b"token-a") == "alice"
    settled = time.time() - keys_module.RACY_WINDOW_S - 1
    os.utime(path, (settled, settled))
    assert ring.identify(b"token-a") is None


def test_every_key_is_compared_in_constant_time(tmp_path, monkeypatch):
    """hmac.compare_digest against every stored digest, whichever matches: timing says nothing about the keys."""
    path = tmp_path / "keys"
    write(path, *(keys_file_line(f"key{i}", f"token-{i}") for i in range(5)))
    ring = KeyRing(path).load()
    calls = []
    real = keys_module.hmac.compare_digest

    def counted_compare(a, b):
        calls.append(1)
        return real(a, b)

    monkeypatch.setattr(keys_module.hmac, "compare_digest", counted_compare)
    for token, expected in ((b"token-0", "key0"), (b"token-4", "key4"), (b"nope", None)):
        calls.clear()
        assert ring.identify(token) == expected
        assert len(calls) == 5


def test_an_over_long_token_is_refused_without_hashing(tmp_path):
    path = tmp_path / "keys"
    long_token = "x" * (keys_module.MAX_TOKEN_BYTES + 1)
    write(path, keys_file_line("long", long_token))
    assert KeyRing(path).load().identify(long_token.encode()) is None


def run_keys(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "app.keys", *args], cwd=REPO_ROOT, input=stdin, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip


def test_keys_new_prints_the_token_once_and_its_line(tmp_path):
    first, second = run_keys("new", "pacs-worker"), run_keys("new", "pacs-worker")
    assert first.returncode == 0, first.stderr
    token, line = first.stdout.splitlines()
    assert len(token) >= 43 and set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert line == keys_file_line("pacs-worker", token) and token not in line
    assert "shown only now" in first.stderr
    assert second.stdout.splitlines()[0] != token  # a new random token each time
    path = tmp_path / "keys"
    write(path, line, second.stdout.splitlines()[1].replace("pacs-worker", "other"))
    assert KeyRing(path).load().identify(token.encode()) == "pacs-worker"
    assert run_keys("check", str(path)).returncode == 0


def test_keys_hash_and_check_and_a_bad_key_id(tmp_path):
    hashed = run_keys("hash", "bob", stdin="existing-token\n")
    assert hashed.returncode == 0 and hashed.stdout.strip() == keys_file_line("bob", "existing-token")
    bad = run_keys("new", "no spaces allowed")
    assert bad.returncode == 2 and "invalid key id" in bad.stderr and bad.stdout == ""
    path = tmp_path / "keys"
    write(path, "bob:secret-token-pasted")
    checked = run_keys("check", str(path))
    assert checked.returncode == 1 and "line 1" in checked.stderr and "secret-token-pasted" not in checked.stderr


def test_parse_keys_reports_problems_without_raising():
    parsed = parse_keys("# c\nalice:" + "0" * 64 + "\nbroken\n")
    assert list(parsed.keys) == ["alice"] and parsed.problems == [
        "line 3: expected KEY_ID:SHA256_HEX (key id: 1-64 of A-Za-z0-9._-)"
    ]
