"""API keys: the keys file, the constant-time check, and `python -m app.keys` to make a key.

The keys file (`PNEUMONIA_API_KEYS_FILE`) holds one key a line, `KEY_ID:SHA256_HEX`, where the hex is the
SHA-256 of the token's bytes, never the token; blank lines and `#` comments are ignored. Example:

    # who            sha256(token)
    pacs-worker:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08

The service never sees a token at rest: a caller's token is hashed and the digest compared with every
stored digest with `hmac.compare_digest` (no early exit, so the time taken does not depend on which key
matched or how much of it). The key id (never the token) is what the audit trail and the rate limiter name.

Rotation without a restart: the file is re-read when it changes (inode, size or modification time; and
while it is younger than `RACY_WINDOW_S`, every time, since two writes within one timestamp tick look
alike). A Kubernetes Secret update (an atomic symlink swap) is seen on the next request. On start-up the
file must exist and every line must parse (`KeysFileError`); on a reload a missing or unreadable file leaves
no valid key (fail closed) and a bad line is skipped, both logged with the line number, never its content.
A file rewritten in place is empty for a moment: a young file without a valid key keeps the previous keys
until it is `RACY_WINDOW_S` old, so emptying the file revokes every key within that time, not at once.

    python -m app.keys new KEY_ID      a new token (printed once) and its line for the keys file
    python -m app.keys hash KEY_ID     the keys-file line for a token read from standard input
    python -m app.keys check FILE      validate a keys file (exit 1 naming each bad line)
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import logging
import os
import re
import secrets
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("app.keys")

KEY_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_DIGEST_PATTERN = re.compile(r"^[0-9A-Fa-f]{64}$")
TOKEN_BYTES = 32  # secrets.token_urlsafe(32): 256 random bits, 43 URL-safe characters
# Longer tokens are refused unhashed: no token this module makes comes near it.
MAX_TOKEN_BYTES = 1024
RACY_WINDOW_S = 2.0


class KeysFileError(ValueError):
    """The keys file is missing, unreadable or has a line that is not `KEY_ID:SHA256_HEX`."""


def digest(token: bytes) -> bytes:
    return hashlib.sha256(token).digest()


def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def keys_file_line(key_id: str, token: str) -> str:
    if not KEY_ID_PATTERN.match(key_id):
        raise ValueError(f"invalid key id {key_id!r}: 1-64 of A-Z a-z 0-9 . _ - (starting with a letter or digit)")
    return f"{key_id}:{digest(token.encode('utf-8')).hex()}"


@dataclass(frozen=True)
class ParsedKeys:
    keys: dict[str, bytes] = field(default_factory=dict)  # key id -> SHA-256 digest of its token
    problems: list[str] = field(default_factory=list)  # "line N: why" (never the line itself)


def parse_keys(text: str) -> ParsedKeys:
    parsed = ParsedKeys()
    seen_digests: set[bytes] = set()
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key_id, sep, hex_digest = (part.strip() for part in line.partition(":"))
        if not sep or not KEY_ID_PATTERN.match(key_id):
            parsed.problems.append(f"line {number}: expected KEY_ID:SHA256_HEX (key id: 1-64 of A-Za-z0-9._-)")
        elif not _DIGEST_PATTERN.match(hex_digest):
            parsed.problems.append(
                f"line {number}: the part after ':' must be the 64 hex digits of the token's SHA-256, not the token"
            )
        elif key_id in parsed.keys:
            parsed.problems.append(f"line {number}: key id {key_id!r} appears twice")
        elif bytes.fromhex(hex_digest) in seen_digests:
            parsed.problems.append(f"line {number}: the same token digest appears under two key ids")
        else:
            parsed.keys[key_id] = bytes.fromhex(hex_digest)
            seen_digests.add(parsed.keys[key_id])
    return parsed


def read_keys_file(path: Path) -> ParsedKeys:
    """Strict: the file must be readable, every line valid, at least one key (`KeysFileError` otherwise)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise KeysFileError(f"cannot read the API keys file {path}: {type(exc).__name__}: {exc}") from exc
    parsed = parse_keys(text)
    if parsed.problems:
        raise KeysFileError(f"API keys file {path}: " + "; ".join(parsed.problems))
    if not parsed.keys:
        raise KeysFileError(f"API keys file {path} has no keys (lines KEY_ID:SHA256_HEX; `python -m app.keys new ID`)")
    return parsed


def _signature(stat: os.stat_result) -> tuple[int, int, int, int, int]:
    return (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)


class KeyRing:
    """The keys of one keys file, re-read when it changes. Safe to share between threads."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._keys: tuple[tuple[str, bytes], ...] = ()
        self._signature: tuple[int, ...] | None = None
        self._racy_until = 0.0
        self._problems: list[str] = []
        self._lock = threading.Lock()
        self._loaded = False

    def load(self) -> KeyRing:
        """Start-up: read the file strictly (`KeysFileError` when missing, unreadable or with a bad line)."""
        with self._lock:
            stat = os.stat(self.path) if self.path.exists() else None
            parsed = read_keys_file(self.path)
            self._install(parsed.keys, stat)
        log.info("API keys: %d loaded from %s (ids: %s)", len(self._keys), self.path, ", ".join(self.key_ids))
        return self

    @property
    def key_ids(self) -> list[str]:
        return [key_id for key_id, _ in self._keys]

    def __len__(self) -> int:
        return len(self._keys)

    def refresh(self) -> None:
        """Re-read the file if it changed since the last read (a stat per call; a read only on change)."""
        try:
            stat: os.stat_result | None = os.stat(self.path)
        except OSError:
            stat = None
        signature = _signature(stat) if stat is not None else None
        if self._loaded and signature == self._signature and time.time() >= self._racy_until:
            return
        with self._lock:
            self._reload(stat, signature)

    def _reload(self, stat: os.stat_result | None, signature: tuple[int, ...] | None) -> None:
        if stat is None:
            if self._keys or not self._loaded:
                log.error("API keys file %s cannot be read: no key is valid until it is back", self.path)
            self._install({}, None)
            return
        try:
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            log.error(
                "API keys file %s cannot be read (%s): no key is valid until it is", self.path, type(exc).__name__
            )
            self._install({}, None)
            return
        parsed = parse_keys(text)
        if not parsed.keys and self._keys and time.time() - stat.st_mtime < RACY_WINDOW_S:
            # Caught mid-write (an editor truncates, then writes): keep the keys and read again next time; if
            # the file stays without a valid key past RACY_WINDOW_S, that is what it says (no key is valid).
            return
        before = dict(self._keys)
        self._install(parsed.keys, stat)
        if parsed.problems != self._problems:  # the same file re-read (young file): said once
            for problem in parsed.problems:
                log.error("API keys file %s: %s; that line is ignored", self.path, problem)
        self._problems = parsed.problems
        if before != parsed.keys:
            added = sorted(set(parsed.keys) - set(before))
            removed = sorted(set(before) - set(parsed.keys))
            changed = sorted(k for k in set(before) & set(parsed.keys) if before[k] != parsed.keys[k])
            log.warning(
                "API keys reloaded from %s: %d keys (added: %s; removed: %s; replaced: %s)",
                self.path, len(parsed.keys), ", ".join(added) or "-", ", ".join(removed) or "-",
                ", ".join(changed) or "-",
            )  # fmt: skip

    def _install(self, keys: dict[str, bytes], stat: os.stat_result | None) -> None:
        self._keys = tuple(keys.items())
        self._signature = _signature(stat) if stat is not None else None
        # A change within the file system's timestamp granularity would keep the same signature: while the
        # file is that young, re-read it on every call.
        self._racy_until = stat.st_mtime + RACY_WINDOW_S if stat is not None else 0.0
        self._loaded = True

    def identify(self, token: bytes) -> str | None:
        """The key id whose digest matches the token's, or None. Compares against every key, in constant time."""
        self.refresh()
        if not token or len(token) > MAX_TOKEN_BYTES:
            return None
        presented = digest(token)
        match = None
        for key_id, stored in self._keys:
            if hmac.compare_digest(presented, stored):
                match = key_id
        return match


# --- command line ---------------------------------------------------------------------------------------------
def _new(args: argparse.Namespace) -> int:
    token = new_token()
    line = keys_file_line(args.key_id, token)
    print(token)
    print(line)
    print(
        "Line 1 is the token: it is shown only now; give it to the client (Authorization: Bearer TOKEN) and keep "
        "no other copy.\nLine 2 goes into the keys file (PNEUMONIA_API_KEYS_FILE); the service picks it up "
        "without a restart.",
        file=sys.stderr,
    )
    return 0


def _hash(args: argparse.Namespace) -> int:
    token = sys.stdin.readline().strip()
    if not token:
        print("app.keys hash: no token on standard input", file=sys.stderr)
        return 2
    print(keys_file_line(args.key_id, token))
    return 0


def _check(args: argparse.Namespace) -> int:
    try:
        parsed = read_keys_file(Path(args.file))
    except KeysFileError as exc:
        print(f"app.keys check: {exc}", file=sys.stderr)
        return 1
    print(f"{args.file}: {len(parsed.keys)} keys ({', '.join(parsed.keys)})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.keys", description="API keys for the pneumonia service.")
    commands = parser.add_subparsers(dest="command", required=True)
    new = commands.add_parser("new", help="make a token; print it once, then its line for the keys file")
    new.add_argument("key_id", help="who the key is for, e.g. pacs-worker (A-Za-z0-9._-, at most 64)")
    new.set_defaults(run=_new)
    hashed = commands.add_parser("hash", help="the keys-file line for a token read from standard input")
    hashed.add_argument("key_id")
    hashed.set_defaults(run=_hash)
    check = commands.add_parser("check", help="validate a keys file")
    check.add_argument("file")
    check.set_defaults(run=_check)
    args = parser.parse_args(argv)
    try:
        return int(args.run(args))
    except ValueError as exc:
        parser.error(str(exc))
    return 2  # unreachable: parser.error exits


if __name__ == "__main__":
    sys.exit(main())
