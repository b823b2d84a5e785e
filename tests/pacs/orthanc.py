"""A real Orthanc (Debian's `orthanc` and `orthanc-dicomweb` packages) on a free loopback port, with a temporary
storage directory and HTTP basic auth, started and stopped by the tests themselves."""

from __future__ import annotations

import json
import secrets
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.support import free_port, missing_tool

PLUGIN_CANDIDATES = (
    "/usr/share/orthanc/plugins/libOrthancDicomWeb.so",
    "/usr/lib/orthanc/libOrthancDicomWeb.so",
)
START_TIMEOUT_S = 60
USER = "pneumonia-worker"


def orthanc_binary() -> str | None:
    return shutil.which("Orthanc") or next((p for p in ("/usr/sbin/Orthanc", "/usr/bin/Orthanc") if Path(p).exists()),
                                           None)  # fmt: skip


def dicomweb_plugin() -> str:
    for candidate in PLUGIN_CANDIDATES:
        if Path(candidate).exists():
            return candidate
    listing = subprocess.run(["dpkg", "-L", "orthanc-dicomweb"], capture_output=True, text=True, check=False).stdout
    found = [line for line in listing.splitlines() if "DicomWeb" in line and ".so" in line]
    if not found:
        pytest.fail("Orthanc is installed but its DICOMweb plugin is not: apt-get install orthanc-dicomweb")
    return found[0]


@dataclass
class Orthanc:
    process: subprocess.Popen
    port: int
    password: str
    workdir: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicom-web"

    def rest(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, auth=(USER, self.password), timeout=30)

    def count_instances(self) -> int:
        with self.rest() as client:
            return int(client.get("/statistics").json()["CountInstances"])

    def log(self) -> str:
        return (self.workdir / "orthanc.log").read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_orthanc(workdir: Path) -> Orthanc:
    binary = orthanc_binary()
    if binary is None:
        missing_tool("Orthanc is not installed (apt-get install -y --no-install-recommends orthanc orthanc-dicomweb)")
    port, password = free_port(), secrets.token_urlsafe(16)
    storage = workdir / "storage"
    storage.mkdir(parents=True)
    config = {
        "Name": "pneumonia-tests",
        "StorageDirectory": str(storage),
        "IndexDirectory": str(storage),
        "HttpPort": port,
        "DicomServerEnabled": False,  # DICOMweb only: no DIMSE port to collide with anything
        "DicomPort": free_port(),
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True,
        "RegisteredUsers": {USER: password},
        "Plugins": [dicomweb_plugin()],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "StableAge": 1,
    }
    (workdir / "orthanc.json").write_text(json.dumps(config, indent=1))
    log = (workdir / "orthanc.log").open("wb")
    process = subprocess.Popen([binary, str(workdir / "orthanc.json")], cwd=workdir, stdout=log,
                               stderr=subprocess.STDOUT)  # fmt: skip
    log.close()
    orthanc = Orthanc(process, port, password, workdir)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"Orthanc exited with {process.returncode}:\n{orthanc.log()[-3000:]}")
        try:
            with orthanc.rest() as client:
                if client.get("/dicom-web/studies").status_code == 200:
                    return orthanc
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    orthanc.stop()
    pytest.fail(f"Orthanc did not answer within {START_TIMEOUT_S}s:\n{orthanc.log()[-3000:]}")
