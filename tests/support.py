"""Helpers shared by the test suites that talk to real `uvicorn app.main:app` subprocesses over loopback.

Used by tests/integration and tests/hardening (import as `from tests.support import ...`; the conftests
re-export the `start_server` fixture). Process helpers shared with the benchmarks (`free_port`, /proc readings)
live in bench/servers.py and are re-exported here, so there is one of each.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import httpx
import pytest

from bench.servers import free_port, proc_status_kib

REPO_ROOT = Path(__file__).resolve().parents[1]
SHIPPED_BUNDLE = REPO_ROOT / "models" / "default"  # the bundle the service serves by default
START_TIMEOUT_S = 240


@dataclass
class Server:
    process: subprocess.Popen
    base_url: str
    log_path: Path

    def stop(self) -> int:
        return stop(self.process)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def rss_kib(self) -> int:
        """Resident set size of the uvicorn process (VmRSS from /proc), in KiB."""
        return rss_kib(self.process.pid)


def rss_kib(pid: int) -> int:
    return proc_status_kib(pid)["VmRSS"]


def launch(
    bundle_dir: Path,
    log_path: Path,
    *,
    uvicorn_args: tuple[str, ...] = (),
    **env_overrides: str,
) -> tuple[subprocess.Popen, str]:
    """Start uvicorn on a free loopback port; stdout and stderr both go to `log_path`."""
    port = free_port()
    env = {
        **os.environ,
        "PNEUMONIA_MODEL_DIR": str(bundle_dir),
        "TF_CPP_MIN_LOG_LEVEL": "3",
        # The tiny test bundles' detectors are fitted on 36 synthetic 32 px images, so their verdict on a real
        # sample means nothing; tests of decoding, limits, explanations and stores run without the check.
        # tests/integration/test_input_check_http.py sets the policy itself, on the shipped bundle.
        "PNEUMONIA_INPUT_CHECK": "off",
        **env_overrides,
    }
    log_file = log_path.open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1", "--port", str(port), *uvicorn_args],
        cwd=REPO_ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT,
    )  # fmt: skip
    log_file.close()
    return process, f"http://127.0.0.1:{port}"


def wait_ready(process: subprocess.Popen, base_url: str, log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"server exited with {process.returncode} before ready:\n{log_path.read_text()[-4000:]}")
        try:
            if httpx.get(f"{base_url}/health/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    process.kill()
    pytest.fail(f"server not ready within {START_TIMEOUT_S}s:\n{log_path.read_text()[-4000:]}")


def stop(process: subprocess.Popen) -> int:
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise


@pytest.fixture(scope="module")
def start_server(tmp_path_factory):
    """Factory: start uvicorn on a bundle, wait for ready; every server is SIGTERMed at the end."""
    started: list[subprocess.Popen] = []

    def factory(bundle_dir: Path, *, uvicorn_args: tuple[str, ...] = (), **env: str) -> Server:
        workdir = tmp_path_factory.mktemp("server")
        process, base_url = launch(bundle_dir, workdir / "server.log", uvicorn_args=uvicorn_args, **env)
        started.append(process)
        wait_ready(process, base_url, workdir / "server.log")
        return Server(process, base_url, workdir / "server.log")

    yield factory
    for process in started:
        if process.poll() is None:
            # uvicorn shuts down gracefully, then re-raises the captured SIGTERM: -15 is a clean exit here
            assert stop(process) in (0, -signal.SIGTERM), "uvicorn did not exit on SIGTERM"


def missing_tool(message: str) -> NoReturn:
    """A program the tests run for real (Orthanc, redis-server, Chromium) is not installed: skip, with `message`
    saying how to install it, except under CI (the CI variable set, as .ci/run sets it), where the tools are
    installed on purpose and a missing one must fail the run rather than let its tests pass by skipping."""
    if os.environ.get("CI"):
        pytest.fail(f"{message}; CI is set, so a missing tool fails instead of skipping")
    pytest.skip(message)


def copy_bundle(tiny_bundle: Path, target: Path) -> Path:
    shutil.copytree(tiny_bundle, target)
    return target


def run_coroutine(coroutine):
    """`asyncio.run` in a thread of its own. Playwright's sync API (tests/browser, session-scoped) keeps an event
    loop running in the main thread for the rest of the session, where `asyncio.run` refuses to start."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()
