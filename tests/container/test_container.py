"""The Dockerfile and docker-compose.yml, built and run for real with podman (`-m container`).

Builds the image, runs it with host networking on a free loopback port (UVICORN_HOST/UVICORN_PORT) with
the tiny test bundle mounted read-only and a read-only root filesystem, checks readiness through the
image's own HEALTHCHECK, /predict and /explain over HTTP from outside, the non-root user and a clean stop;
repeats with the baked-in bundle when models/default/ holds one; then brings the compose file up with the
host-network override. Writes the image size and build time to bench/results/container.json.
Everything it creates (containers, the test image, the compose project) is removed, even on failure;
set CONTAINER_TEST_KEEP_IMAGE=1 to keep the image (and its build cache) for a faster rerun.

Needs podman (see /work/shared/tools/container-setup on this project's machines); skipped without it.
"""

from __future__ import annotations

import base64
import json
import os
import platform
import shutil
import socket
import stat
import subprocess
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import httpx
import pytest

from app.bundle import PARITY_TOLERANCE, RESEARCH_DISCLAIMER

REPO_ROOT = Path(__file__).resolve().parents[2]
IMAGE = "pneumonia-service:test"
RESULTS = REPO_ROOT / "bench" / "results" / "container.json"
READY_TIMEOUT_S = 180
BUILD_TIMEOUT_S = 1800
MODEL_DIR_IN_IMAGE = "/srv/models/default"
MOUNTED_MODEL_DIR = "/srv/models/mounted"

pytestmark = [
    pytest.mark.container,
    pytest.mark.timeout(BUILD_TIMEOUT_S + 600),
    pytest.mark.skipif(shutil.which("podman") is None, reason="podman not on PATH (run container-setup first)"),
]


def podman(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    result = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return result


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def logs(container: str) -> str:
    result = podman("logs", "--tail", "80", container, check=False)
    return (result.stdout + result.stderr)[-6000:]


def wait_healthy(container: str, base_url: str, timeout: float = READY_TIMEOUT_S) -> float:
    """Poll the image's HEALTHCHECK (`podman healthcheck run`) until healthy; seconds it took."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        state = podman("inspect", "--format", "{{.State.Status}}", container, check=False).stdout.strip()
        if state not in ("created", "running", "configured", "initialized"):
            pytest.fail(f"container {container} is {state or 'gone'} before ready:\n{logs(container)}")
        if podman("healthcheck", "run", container, check=False, timeout=30).returncode == 0:
            assert httpx.get(f"{base_url}/health/ready", timeout=5).status_code == 200
            return time.monotonic() - started
        time.sleep(2)
    pytest.fail(f"container {container} not healthy within {timeout}s:\n{logs(container)}")


def check_predict_and_explain(base_url: str, sample: Path) -> dict:
    ready = httpx.get(f"{base_url}/health/ready", timeout=5).json()
    assert ready["status"] == "ready"
    files = {"file": (sample.name, sample.read_bytes(), "image/jpeg")}
    response = httpx.post(f"{base_url}/predict", files=files, timeout=120)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["disclaimer"] == RESEARCH_DISCLAIMER
    assert 0.0 <= body["probability"] <= 1.0
    assert body["label"] in ("NORMAL", "PNEUMONIA")
    assert body["model"]["sha256"] == ready["model"]["sha256"]
    assert body["input"]["format"] == "JPEG"
    assert body["prediction_id"]

    response = httpx.post(f"{base_url}/explain", files=files, timeout=300)
    if ready["explain"]:
        assert response.status_code == 200, response.text
        explained = response.json()
        assert explained["disclaimer"] == RESEARCH_DISCLAIMER
        assert explained["heatmap_format"] == "png"
        assert base64.b64decode(explained["heatmap"]).startswith(b"\x89PNG\r\n\x1a\n")
        assert abs(explained["probability"] - body["probability"]) <= PARITY_TOLERANCE
    else:  # a bundle without the Keras model: the service must say so, not fail
        assert response.status_code in (501, 503), response.text
    return ready


def readable_copy(bundle: Path, dest: Path) -> Path:
    """The bundle where the container's uid 10001 can read it (pytest's temp dirs are 0700 root)."""
    shutil.copytree(bundle, dest)
    for path in [dest, *dest.rglob("*")]:
        mode = stat.S_IRUSR | stat.S_IWUSR | stat.S_IRGRP | stat.S_IROTH
        path.chmod(mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH if path.is_dir() else mode)
    return dest


@pytest.fixture(scope="module")
def image() -> str:
    started = time.monotonic()
    result = subprocess.run(
        ["podman", "build", "--format", "docker", "--network", "host", "-t", IMAGE, "."],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S,
    )  # fmt: skip
    build_s = time.monotonic() - started
    assert result.returncode == 0, f"podman build failed:\n{(result.stdout + result.stderr)[-6000:]}"
    size = int(podman("image", "inspect", "--format", "{{.Size}}", IMAGE).stdout.strip())
    base = podman("image", "inspect", "--format", "{{.Size}}", "python:3.11-slim", check=False).stdout.strip()
    report = {
        "image": IMAGE,
        "size_bytes": size,
        "size_mb": round(size / 1e6, 1),
        "base_image_size_mb": round(int(base) / 1e6, 1) if base.isdigit() else None,
        "build_seconds": round(build_s, 1),
        "build_cached": "Using cache" in result.stdout and build_s < 120,
        "engine": podman("--version").stdout.strip(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "note": "podman with a local stand-in for python:3.11-slim (Debian bookworm Python 3.11)",
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nimage {IMAGE}: {report['size_mb']} MB, built in {report['build_seconds']} s -> {RESULTS}")
    yield IMAGE
    if os.environ.get("CONTAINER_TEST_KEEP_IMAGE") != "1":
        podman("rmi", "-f", IMAGE, check=False)
        # the builder stage's image (build cache, untagged) is no parent of IMAGE: prune it by its label
        podman("image", "prune", "-f", "--filter", "label=io.pneumonia-screening.stage=builder", check=False)


@pytest.fixture
def run_container(image):
    """Factory: `podman run -d --network host` on a free loopback port; removed at teardown."""
    created: list[str] = []

    def factory(*extra: str) -> tuple[str, str]:
        port = free_port()
        name = f"pneumonia-ctest-{uuid.uuid4().hex[:8]}"
        podman(
            "run", "-d", "--name", name, "--network", "host",
            "-e", "UVICORN_HOST=127.0.0.1", "-e", f"UVICORN_PORT={port}", *extra, image,
        )  # fmt: skip
        created.append(name)
        return name, f"http://127.0.0.1:{port}"

    yield factory
    for name in created:
        podman("rm", "-f", "-t", "5", name, check=False)


def record(key: str, value) -> None:
    data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    data[key] = value
    RESULTS.write_text(json.dumps(data, indent=2) + "\n")


def assert_non_root_and_clean_stop(name: str) -> None:
    uid = podman("exec", name, "id", "-u").stdout.strip()
    assert uid != "0", "the service must not run as root"
    assert uid == "10001"
    top = podman("top", name, "user", "args", check=False).stdout
    assert "uvicorn" in top and "root" not in top, top
    started = time.monotonic()
    podman("stop", "-t", "30", name, timeout=60)
    exit_code = podman("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip()
    assert exit_code == "0", f"unclean exit {exit_code}:\n{logs(name)}"
    assert time.monotonic() - started < 30, "SIGTERM did not stop the server (it needed the kill)"


def test_tiny_bundle_mounted_read_only(run_container, tiny_bundle, sample_images, tmp_path):
    bundle = readable_copy(tiny_bundle, tmp_path / "bundle")
    name, base_url = run_container(
        "--read-only", "--tmpfs", "/tmp",
        "-v", f"{bundle}:{MOUNTED_MODEL_DIR}:ro", "-e", f"PNEUMONIA_MODEL_DIR={MOUNTED_MODEL_DIR}",
    )  # fmt: skip
    ready_s = wait_healthy(name, base_url)
    record("ready_seconds_tiny_bundle", round(ready_s, 1))
    ready = check_predict_and_explain(base_url, sample_images["PNEUMONIA"][0])
    assert ready["explain"], "the tiny bundle carries its Keras model: Grad-CAM must be available"
    assert_non_root_and_clean_stop(name)


@pytest.mark.skipif(
    not (REPO_ROOT / "models" / "default" / "metadata.json").exists(), reason="no shipped bundle in models/default"
)
def test_baked_in_default_bundle(run_container, sample_images):
    name, base_url = run_container()
    ready_s = wait_healthy(name, base_url)
    record("ready_seconds_default_bundle", round(ready_s, 1))
    check_predict_and_explain(base_url, sample_images["NORMAL"][0])
    assert_non_root_and_clean_stop(name)


@pytest.mark.skipif(shutil.which("podman-compose") is None, reason="podman-compose not on PATH")
def test_compose_with_host_override(image, tiny_bundle, sample_images, tmp_path):
    port = free_port()
    project = f"pneumonia-ctest-{uuid.uuid4().hex[:8]}"
    files = ["-f", str(REPO_ROOT / "docker-compose.yml"), "-f", str(REPO_ROOT / "docker-compose.host.yml")]
    if not (REPO_ROOT / "models" / "default" / "metadata.json").exists():
        # No shipped bundle yet: serve the tiny one, exactly as the compose file's comment describes.
        bundle = readable_copy(tiny_bundle, tmp_path / "bundle")
        override = tmp_path / "docker-compose.bundle.yml"
        override.write_text(
            "services:\n  pneumonia-service:\n"
            f"    volumes:\n      - {bundle}:{MOUNTED_MODEL_DIR}:ro\n"
            f"    environment:\n      PNEUMONIA_MODEL_DIR: {MOUNTED_MODEL_DIR}\n"
        )
        files += ["-f", str(override)]
    # The compose file's image name is overridden to the image built above, so `up` does not rebuild it.
    image_override = tmp_path / "docker-compose.image.yml"
    image_override.write_text(f"services:\n  pneumonia-service:\n    image: {image}\n")
    files += ["-f", str(image_override)]
    env = {**os.environ, "PNEUMONIA_HOST_PORT": str(port)}

    def compose(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["podman-compose", "-p", project, *files, *args],
            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip

    try:
        up = compose("up", "-d")
        assert up.returncode == 0, f"compose up failed:\n{(up.stdout + up.stderr)[-4000:]}"
        ids = podman("ps", "-a", "-q", "--filter", f"label=io.podman.compose.project={project}").stdout.split()
        assert len(ids) == 1, f"expected one container, got {ids}:\n{up.stdout[-2000:]}"
        base_url = f"http://127.0.0.1:{port}"
        wait_healthy(ids[0], base_url)
        inspect = json.loads(podman("inspect", ids[0]).stdout)[0]
        assert inspect["HostConfig"]["ReadonlyRootfs"] is True
        assert inspect["HostConfig"]["NetworkMode"] == "host"
        assert inspect["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"
        files_ = {"file": (sample_images["NORMAL"][1].name, sample_images["NORMAL"][1].read_bytes(), "image/jpeg")}
        response = httpx.post(f"{base_url}/predict", files=files_, timeout=120)
        assert response.status_code == 200, response.text
        assert response.json()["disclaimer"] == RESEARCH_DISCLAIMER
    finally:
        down = compose("down", "-t", "30")
        leftovers = podman("ps", "-a", "-q", "--filter", f"label=io.podman.compose.project={project}").stdout.split()
        for container in leftovers:
            podman("rm", "-f", container, check=False)
    assert down.returncode == 0, f"compose down failed:\n{(down.stdout + down.stderr)[-4000:]}"
    assert not leftovers, f"compose down left containers behind: {leftovers}"
