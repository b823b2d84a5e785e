"""The Dockerfile and docker-compose.yml, built and run for real with podman (`-m container`).

Builds the image, runs it with host networking on a free loopback port (UVICORN_HOST/UVICORN_PORT) with
the tiny test bundle mounted read-only and a read-only root filesystem, checks readiness through the
image's own HEALTHCHECK, /predict and /explain over HTTP from outside, the non-root user and a clean stop;
repeats with the baked-in bundle (models/default/); then brings the compose file up with the host-network
override. The image size, build time and base image are printed, and written as JSON to $CONTAINER_TEST_REPORT
when that is set (`CONTAINER_TEST_REPORT=bench/results/container.json` refreshes the committed evidence on
purpose; a test writes no tracked file by itself).
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
import stat
import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from pneumonia.bundle import PARITY_TOLERANCE, RESEARCH_DISCLAIMER
from tests.support import REPO_ROOT, free_port

IMAGE = "pneumonia-service:test"
BASE_IMAGE = "python:3.11-slim"  # the Dockerfile's PYTHON_IMAGE default
READY_TIMEOUT_S = 180
BUILD_TIMEOUT_S = 1800
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


def check_predict_and_explain(
    base_url: str, sample: Path, expected_label: str | None = None, params: dict[str, str] | None = None
) -> dict:
    """/predict and /explain from outside the container; both bundles used here carry their Keras model.

    The shipped bundle answers at the default input-check policy. The tiny bundle's detector was fitted on 36
    synthetic variants at 32 px, so its verdict on a real sample means nothing: that test asks for `warn`
    (a verdict is still given and checked, the answer is not refused)."""
    ready = httpx.get(f"{base_url}/health/ready", timeout=5).json()
    assert ready["status"] == "ready" and ready["explain"], ready
    files = {"file": (sample.name, sample.read_bytes(), "image/jpeg")}
    response = httpx.post(f"{base_url}/predict", files=files, params=params, timeout=120)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["disclaimer"] == RESEARCH_DISCLAIMER
    assert 0.0 <= body["probability"] <= 1.0
    if expected_label is not None:  # the shipped bundle's regression pin (tests/test_shipped_bundle.py)
        assert body["label"] == expected_label, body
    assert body["model"]["sha256"] == ready["model"]["sha256"]
    assert body["input"]["format"] == "JPEG"
    assert body["prediction_id"]
    assert body["input_check"]["detector"] == "available", body["input_check"]

    response = httpx.post(f"{base_url}/explain", files=files, params=params, timeout=300)
    assert response.status_code == 200, response.text
    explained = response.json()
    assert explained["disclaimer"] == RESEARCH_DISCLAIMER
    assert explained["heatmap_format"] == "png"
    assert base64.b64decode(explained["heatmap"]).startswith(b"\x89PNG\r\n\x1a\n")
    assert abs(explained["probability"] - body["probability"]) <= PARITY_TOLERANCE
    return ready


def readable_copy(bundle: Path, dest: Path) -> Path:
    """The bundle where the container's uid 10001 can read it (pytest's temp dirs are 0700 root)."""
    shutil.copytree(bundle, dest)
    for path in [dest, *dest.rglob("*")]:
        mode = stat.S_IRUSR | stat.S_IWUSR | stat.S_IRGRP | stat.S_IROTH
        path.chmod(mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH if path.is_dir() else mode)
    return dest


@pytest.fixture(scope="module")
def report() -> Iterator[dict]:
    """What the container tests measured; printed at the end, and written to $CONTAINER_TEST_REPORT if set."""
    measured: dict = {}
    yield measured
    print(f"\ncontainer test measurements:\n{json.dumps(measured, indent=2)}")
    if os.environ.get("CONTAINER_TEST_REPORT"):
        Path(os.environ["CONTAINER_TEST_REPORT"]).write_text(json.dumps(measured, indent=2) + "\n")


@pytest.fixture(scope="module")
def image(report) -> Iterator[str]:
    started = time.monotonic()
    result = subprocess.run(
        ["podman", "build", "--format", "docker", "--network", "host", "-t", IMAGE, "."],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S,
    )  # fmt: skip
    build_s = time.monotonic() - started
    assert result.returncode == 0, f"podman build failed:\n{(result.stdout + result.stderr)[-6000:]}"
    size = int(podman("image", "inspect", "--format", "{{.Size}}", IMAGE).stdout.strip())
    base = podman("image", "inspect", "--format", "{{.Size}}", BASE_IMAGE, check=False).stdout.strip()
    base_id = podman("image", "inspect", "--format", "{{.Id}}", BASE_IMAGE, check=False).stdout.strip()
    report.update(
        {
            "image": IMAGE,
            "size_bytes": size,
            "size_mb": round(size / 1e6, 1),
            "base_image_size_mb": round(int(base) / 1e6, 1) if base.isdigit() else None,
            "build_seconds": round(build_s, 1),
            "build_cached": "Using cache" in result.stdout and build_s < 120,
            "engine": podman("--version").stdout.strip(),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
            "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
            # what was actually built on: the local image named BASE_IMAGE (a registry pull or a local stand-in)
            "base_image": f"{BASE_IMAGE} {base_id[:19] or 'not found'}",
        }
    )
    yield IMAGE
    if os.environ.get("CONTAINER_TEST_KEEP_IMAGE") != "1":
        podman("rmi", "-f", IMAGE, check=False)
        # the builder stage's image (build cache, untagged) is no parent of IMAGE: prune it by its label
        podman("image", "prune", "-f", "--filter", "label=io.pneumonia-screening.stage=builder", check=False)


@pytest.fixture
def run_container(image):
    """Factory: `podman run -d --network host` on a free loopback port; removed at teardown."""
    created: list[str] = []

    def factory(*extra: str, host: str = "127.0.0.1") -> tuple[str, str]:
        port = free_port()
        name = f"pneumonia-ctest-{uuid.uuid4().hex[:8]}"
        podman(
            "run", "-d", "--name", name, "--network", "host",
            "-e", f"UVICORN_HOST={host}", "-e", f"UVICORN_PORT={port}", *extra, image,
        )  # fmt: skip
        created.append(name)
        return name, f"http://127.0.0.1:{port}"

    yield factory
    for name in created:
        podman("rm", "-f", "-t", "5", name, check=False)


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


def test_tiny_bundle_mounted_read_only(run_container, report, tiny_bundle, sample_images, tmp_path):
    bundle = readable_copy(tiny_bundle, tmp_path / "bundle")
    name, base_url = run_container(
        "--read-only", "--tmpfs", "/tmp",
        "-v", f"{bundle}:{MOUNTED_MODEL_DIR}:ro", "-e", f"PNEUMONIA_MODEL_DIR={MOUNTED_MODEL_DIR}",
    )  # fmt: skip
    ready_s = wait_healthy(name, base_url)
    report["ready_seconds_tiny_bundle"] = round(ready_s, 1)
    check_predict_and_explain(base_url, sample_images["PNEUMONIA"][0], params={"input_check": "warn"})
    assert_non_root_and_clean_stop(name)


def test_baked_in_default_bundle(run_container, report, sample_images):
    name, base_url = run_container()
    ready_s = wait_healthy(name, base_url)
    report["ready_seconds_default_bundle"] = round(ready_s, 1)
    check_predict_and_explain(base_url, sample_images["NORMAL"][0], expected_label="NORMAL")
    assert_non_root_and_clean_stop(name)


def test_on_every_interface_without_keys_the_image_refuses_to_start(run_container):
    """The image listens on 0.0.0.0 (its UVICORN_HOST): with no API keys it must stop, saying why, before it
    loads the model or binds (docs/security.md)."""
    name, _ = run_container(host="0.0.0.0")
    deadline = time.monotonic() + 120
    while podman("inspect", "--format", "{{.State.Status}}", name).stdout.strip() in ("created", "running"):
        assert time.monotonic() < deadline, f"still running without keys on 0.0.0.0:\n{logs(name)}"
        time.sleep(1)
    assert podman("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip() != "0"
    output = logs(name)
    assert "refusing to start" in output and "PNEUMONIA_API_KEYS_FILE" in output, output
    assert "loading model bundle" not in output


def test_with_a_mounted_keys_file_only_a_key_scores(run_container, tiny_bundle, sample_images, tmp_path):
    from app.keys import keys_file_line, new_token

    token = new_token()
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "api-keys").write_text(keys_file_line("ctest", token) + "\n")
    for path in (secrets, secrets / "api-keys"):  # the container's uid 10001 reads them (digests, not tokens)
        path.chmod(0o755 if path.is_dir() else 0o644)
    bundle = readable_copy(tiny_bundle, tmp_path / "bundle")
    name, base_url = run_container(
        "--read-only", "--tmpfs", "/tmp",
        "-v", f"{bundle}:{MOUNTED_MODEL_DIR}:ro", "-e", f"PNEUMONIA_MODEL_DIR={MOUNTED_MODEL_DIR}",
        "-v", f"{secrets}:/run/secrets/pneumonia:ro", "-e", "PNEUMONIA_API_KEYS_FILE=/run/secrets/pneumonia/api-keys",
        "-e", "PNEUMONIA_AUDIT_LOG=/dev/stdout",
    )  # fmt: skip
    wait_healthy(name, base_url)  # the HEALTHCHECK needs no key
    files = {"file": ("x.jpeg", sample_images["NORMAL"][0].read_bytes(), "image/jpeg")}
    refused = httpx.post(f"{base_url}/predict", files=files, timeout=120)
    assert refused.status_code == 401 and refused.headers["WWW-Authenticate"] == "Bearer"
    answered = httpx.post(
        f"{base_url}/predict", files=files, params={"input_check": "warn"},
        headers={"Authorization": f"Bearer {token}"}, timeout=120,
    )  # fmt: skip
    assert answered.status_code == 200, answered.text
    audit = [json.loads(line) for line in logs(name).splitlines() if line.startswith('{"v":1')]
    assert [(a["status"], a["key_id"]) for a in audit] == [(401, None), (200, "ctest")]
    assert token not in logs(name)


@pytest.mark.skipif(shutil.which("podman-compose") is None, reason="podman-compose not on PATH")
def test_compose_with_host_override(image, sample_images, tmp_path):
    port = free_port()
    project = f"pneumonia-ctest-{uuid.uuid4().hex[:8]}"
    files = ["-f", str(REPO_ROOT / "docker-compose.yml"), "-f", str(REPO_ROOT / "docker-compose.host.yml")]
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
