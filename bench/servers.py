"""Start a uvicorn server as a subprocess on a free loopback port, wait until it is ready, read its memory, stop it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parent.parent
# the committed sample X-rays every benchmark sends or scores, and the bundle they measure by default
SAMPLES = REPO_ROOT / "tests" / "data" / "samples"
DEFAULT_BUNDLE = REPO_ROOT / "models" / "default"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def proc_status_kib(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM (peak RSS), VmSize from /proc/PID/status, in KiB."""
    values: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM", "VmSize", "Threads"):
                values[key] = int(rest.split()[0])
    return values


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rpartition(")")[2].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime, stime (fields 14 and 15 of stat)


class Server:
    """`python -m uvicorn APP --workers 1` on 127.0.0.1:PORT; stdout+stderr go to `log_path`."""

    def __init__(
        self, name: str, app: str, env: dict[str, str], ready_path: str, log_path: Path, args: tuple[str, ...] = ()
    ):
        self.name = name
        self.args = args  # further uvicorn options
        self.app = app
        self.env = env
        self.ready_path = ready_path
        self.log_path = log_path
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None
        self.startup_s: float | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, timeout_s: float = 300.0) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable, "-m", "uvicorn", self.app, "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
            *self.args,
        ]  # fmt: skip
        self._log = self.log_path.open("wb")
        started = time.perf_counter()
        self.process = subprocess.Popen(
            command, cwd=REPO_ROOT, env=self.env, stdout=self._log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.process.returncode} during start-up:\n{self.log_tail()}"
                )
            try:
                if httpx.get(self.base_url + self.ready_path, timeout=2.0).status_code == 200:
                    self.startup_s = time.perf_counter() - started
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"{self.name} not ready after {timeout_s:.0f} s:\n{self.log_tail()}")

    def memory_kib(self) -> dict[str, int]:
        return proc_status_kib(self.pid)

    def cpu_seconds(self) -> float:
        return proc_cpu_seconds(self.pid)

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM, then SIGKILL if it has not exited within `timeout_s`. Returns the exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def __enter__(self) -> Server:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def clean_env(**extra: str) -> dict[str, str]:
    """The caller's environment without PNEUMONIA_* settings (servers run on defaults), plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PNEUMONIA_")}
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env
