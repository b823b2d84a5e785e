"""scripts/serve refuses a taken port at once, before installing anything or loading the model."""

from __future__ import annotations

import os
import socket
import subprocess
import time

from tests.support import REPO_ROOT


def test_a_taken_port_fails_fast_with_one_line():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        result = subprocess.run(
            [str(REPO_ROOT / "scripts" / "serve")],
            env={**os.environ, "HOST": "127.0.0.1", "PORT": str(port)},
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        elapsed = time.monotonic() - started
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"127.0.0.1:{port} is already in use" in lines[0] and "PORT=" in lines[0], lines
    assert result.stdout == ""
    assert elapsed < 10, f"took {elapsed:.1f}s: the check must come before the install and the model load"
