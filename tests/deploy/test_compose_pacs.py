"""Static checks of the compose `pacs` profile (docker-compose.yml, and docker-compose.host.yml for hosts without
a bridge network): Orthanc with DICOMweb and the PACS worker must agree on where DICOMweb is, who the worker
is and what its password is, or the demo (docs/pacs.md) fails at its first request. No container runs here:
tests/pacs runs the worker against a real Orthanc."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from app.config import Settings
from app.pacs import build_parser

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT = re.compile(r"^\$\{PNEUMONIA_PACS_URL:-(?P<url>[^}]+)\}$")


class ComposeLoader(yaml.SafeLoader):
    """YAML with Compose's merge tags (`!reset`, `!override`) read as their plain values."""


def _plain(loader: yaml.SafeLoader, node: yaml.Node) -> object:
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node)
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node)
    return loader.construct_scalar(node)


for _tag in ("!reset", "!override"):
    ComposeLoader.add_constructor(_tag, _plain)


def services(name: str) -> dict:
    return yaml.load((REPO_ROOT / name).read_text(), Loader=ComposeLoader)["services"]


@pytest.fixture(scope="module")
def compose() -> dict:
    return services("docker-compose.yml")


def worker_args(service: dict) -> argparse.Namespace:
    command = service["command"]
    assert command[:3] == ["python", "-m", "app.pacs"]
    return build_parser().parse_args(command[3:])


def test_the_pacs_profile_starts_orthanc_and_the_worker_and_nothing_else(compose: dict) -> None:
    in_profile = {name for name, service in compose.items() if "pacs" in service.get("profiles", [])}
    assert in_profile == {"orthanc", "pacs-worker"}
    assert compose["orthanc"]["profiles"] == compose["pacs-worker"]["profiles"] == ["pacs"]
    assert "profiles" not in compose["pneumonia-service"]  # a plain `up` starts no PACS
    assert compose["pacs-worker"]["depends_on"] == ["orthanc"]
    # the worker is the service's image, scoring with the same bundle
    assert compose["pacs-worker"]["image"] == compose["pneumonia-service"]["image"]
    worker_env, service_env = compose["pacs-worker"]["environment"], compose["pneumonia-service"]["environment"]
    assert worker_env["PNEUMONIA_MODEL_DIR"] == service_env["PNEUMONIA_MODEL_DIR"]


def test_the_worker_talks_dicomweb_to_orthancs_port_and_root(compose: dict) -> None:
    orthanc, worker = compose["orthanc"], compose["pacs-worker"]
    env = orthanc["environment"]
    assert env["DICOM_WEB_PLUGIN_ENABLED"] == "true"
    (port_mapping,) = orthanc["ports"]
    host_port, container_port = port_mapping.split(":")
    args = worker_args(worker)
    assert args.interval == 30 and not args.once
    default = DEFAULT.match(args.url)
    assert default is not None, args.url
    url = urlsplit(default.group("url"))  # the default: Compose's network, Orthanc by name
    assert url.hostname == "orthanc" and str(url.port) == container_port == host_port == "8042"
    assert url.path.rstrip("/") == env["ORTHANC__DICOM_WEB__ROOT"].rstrip("/") == "/dicom-web"


def test_the_workers_credentials_file_holds_the_password_of_orthancs_registered_user(compose: dict) -> None:
    orthanc, worker = compose["orthanc"], compose["pacs-worker"]
    assert orthanc["environment"]["ORTHANC__AUTHENTICATION_ENABLED"] == "true"
    users = json.loads(orthanc["environment"]["ORTHANC__REGISTERED_USERS"])
    env = worker["environment"]
    assert set(env) <= {f"PNEUMONIA_{name.upper()}" for name in Settings.model_fields}  # real settings only
    assert "PNEUMONIA_PACS_PASSWORD" not in env and "password" not in " ".join(worker["command"]).lower()
    user, secret_path = env["PNEUMONIA_PACS_USERNAME"], env["PNEUMONIA_PACS_PASSWORD_FILE"]
    mounts = [volume.split(":") for volume in worker["volumes"]]
    (source,) = [source for source, target, mode in mounts if target == secret_path and mode == "ro"]
    password = (REPO_ROOT / source).read_text(encoding="utf-8").strip()  # as app.pacs reads it
    assert users == {user: password}


def test_the_host_network_override_keeps_them_together_on_loopback(compose: dict) -> None:
    host = services("docker-compose.host.yml")
    assert host["orthanc"]["network_mode"] == host["pacs-worker"]["network_mode"] == "host"
    assert host["orthanc"]["ports"] == []  # `!reset []`: host networking publishes nothing
    url = urlsplit(worker_args(host["pacs-worker"]).url)
    host_port = compose["orthanc"]["ports"][0].split(":")[0]
    assert url.hostname == "127.0.0.1" and str(url.port) == host_port
    assert url.path.rstrip("/") == compose["orthanc"]["environment"]["ORTHANC__DICOM_WEB__ROOT"].rstrip("/")
    assert worker_args(host["pacs-worker"]).interval == worker_args(compose["pacs-worker"]).interval
