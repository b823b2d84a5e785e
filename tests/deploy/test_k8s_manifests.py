"""Static checks of deploy/k8s/: no cluster is reachable from here, so these are all the checks they get.

They parse; the probes name real routes of the app; ports agree with the Dockerfile; every container runs as
non-root on a read-only root filesystem (and the image itself has a non-root USER); the selectors, the HPA and
the PDB point at the Deployment; the service's settings are real settings; the memory limit covers the RSS the
benchmark measured; Redis persists nothing.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from app.config import Settings

REPO_ROOT = Path(__file__).resolve().parents[2]
K8S = REPO_ROOT / "deploy" / "k8s"
DOCKERFILE = REPO_ROOT / "Dockerfile"
UNITS = {"Ki": 1024, "Mi": 1024**2, "Gi": 1024**3}


def load_all() -> list[dict]:
    documents = []
    for path in sorted(K8S.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document is not None:
                documents.append(document)
    return documents


@pytest.fixture(scope="module")
def manifests() -> list[dict]:
    return load_all()


def one(manifests: list[dict], kind: str, name: str) -> dict:
    found = [m for m in manifests if m["kind"] == kind and m["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def api_container(manifests) -> dict:
    return one(manifests, "Deployment", "pneumonia-service")["spec"]["template"]["spec"]["containers"][0]


def dockerfile_instructions(name: str) -> list[str]:
    return [
        line.split(None, 1)[1].strip() for line in DOCKERFILE.read_text().splitlines() if line.startswith(f"{name} ")
    ]


def to_bytes(quantity: str) -> int:
    match = re.fullmatch(r"(\d+)([KMG]i)?", quantity)
    assert match, f"not a Kubernetes quantity: {quantity}"
    number, unit = match.groups()
    return int(number) * UNITS.get(unit, 1)


def test_every_file_parses_and_every_object_is_named(manifests):
    assert {p.name for p in K8S.glob("*.yaml")} >= {
        "deployment.yaml",
        "service.yaml",
        "hpa.yaml",
        "pdb.yaml",
        "redis.yaml",
    }
    for m in manifests:
        assert m.get("apiVersion") and m.get("kind"), m
        assert m["kind"] == "Kustomization" or m.get("metadata", {}).get("name"), m
    kinds = sorted(m["kind"] for m in manifests if m["kind"] != "Kustomization")
    for kind in ("Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"):
        assert kind in kinds
    (listed,) = [m for m in manifests if m["kind"] == "Kustomization"]
    assert sorted(listed["resources"]) == sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def app_paths() -> set[str]:
    from app.main import create_app

    return set(create_app(Settings()).openapi()["paths"])


def test_probes_hit_real_health_routes_on_the_served_port(manifests):
    container = api_container(manifests)
    paths = app_paths()
    probes = {kind: container[kind]["httpGet"] for kind in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert probes["readinessProbe"]["path"] == "/health/ready"
    assert probes["livenessProbe"]["path"] == probes["startupProbe"]["path"] == "/health/live"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for probe in probes.values():
        assert probe["path"] in paths, sorted(paths)
        assert ports[probe["port"]] == 8000


def test_container_port_matches_the_dockerfile(manifests):
    container = api_container(manifests)
    exposed = {int(p.split("/")[0]) for line in dockerfile_instructions("EXPOSE") for p in line.split()}
    port_line = re.search(r"^\s*(?:ENV\s+)?UVICORN_PORT=(\d+)", DOCKERFILE.read_text(), re.MULTILINE)
    assert port_line, "the Dockerfile sets no UVICORN_PORT"
    env_port = port_line.group(1)
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert {p["containerPort"] for p in container["ports"]} == exposed == {int(env_port)} == {int(env["UVICORN_PORT"])}


def test_service_selects_the_pods_and_targets_the_named_port(manifests):
    deployment = one(manifests, "Deployment", "pneumonia-service")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    service = one(manifests, "Service", "pneumonia-service")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= {p["name"] for p in api_container(manifests)["ports"]}
    pdb = one(manifests, "PodDisruptionBudget", "pneumonia-service")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    hpa = one(manifests, "HorizontalPodAutoscaler", "pneumonia-service")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "pneumonia-service"}
    # a PDB that needs every replica would block node drains forever
    assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


@pytest.mark.parametrize("name", ["pneumonia-service", "pneumonia-redis"])
def test_pods_run_as_non_root_on_a_read_only_root_filesystem(manifests, name):
    pod = one(manifests, "Deployment", name)["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    volumes = {v["name"]: v for v in pod["volumes"]}
    for container in pod["containers"]:
        context = container["securityContext"]
        assert context["runAsNonRoot"] is True
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False and context["capabilities"]["drop"] == ["ALL"]
        for mount in container.get("volumeMounts", []):
            volume = volumes[mount["name"]]
            # only scratch space is writable; the API keys Secret is mounted read-only
            assert "emptyDir" in volume or ("secret" in volume and mount.get("readOnly") is True), mount


def test_the_api_pod_has_a_writable_tmp_and_runs_as_the_image_user(manifests):
    pod = one(manifests, "Deployment", "pneumonia-service")["spec"]["template"]["spec"]
    mounts = {m["mountPath"]: m for m in api_container(manifests)["volumeMounts"]}
    assert set(mounts) == {"/tmp", "/var/run/secrets/pneumonia"}
    assert mounts["/var/run/secrets/pneumonia"]["readOnly"] is True
    (user,) = dockerfile_instructions("USER")[-1:]
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0 and int(uid) == pod["securityContext"]["runAsUser"]


def test_dockerfile_switches_to_a_non_root_user_before_the_command():
    lines = DOCKERFILE.read_text().splitlines()
    users = [i for i, line in enumerate(lines) if line.startswith("USER ")]
    assert users, "the image must not run as root"
    last = lines[users[-1]].split(None, 1)[1].split(":")[0]
    assert last not in ("root", "0")
    assert users[-1] < max(i for i, line in enumerate(lines) if line.startswith("CMD "))


def test_service_settings_in_the_manifest_are_real_settings(manifests):
    env = {e["name"]: e["value"] for e in api_container(manifests)["env"]}
    names = {name.upper() for name in Settings.model_fields}
    settings = {k.removeprefix("PNEUMONIA_").lower(): v for k, v in env.items() if k.startswith("PNEUMONIA_")}
    assert {k.upper() for k in settings} <= names
    Settings(**settings)  # and valid values
    redis_service = one(manifests, "Service", "pneumonia-redis")
    assert (
        settings["cache_url"]
        == f"redis://{redis_service['metadata']['name']}:{redis_service['spec']['ports'][0]['port']}/0"
    )


def test_resources_are_set_and_the_memory_limit_covers_the_measured_rss(manifests):
    resources = api_container(manifests)["resources"]
    assert set(resources) == {"requests", "limits"}
    assert to_bytes(resources["requests"]["memory"]) <= to_bytes(resources["limits"]["memory"])
    benchmark = json.loads((REPO_ROOT / "bench" / "results" / "benchmark.json").read_text())
    load = json.loads((REPO_ROOT / "bench" / "results" / "load.json").read_text())
    measured_kib = max(benchmark["service"]["memory"]["hwm_end_kib"], load["full"]["rss_kib"]["end"])
    assert to_bytes(resources["limits"]["memory"]) >= 1.25 * measured_kib * 1024  # headroom over the peak seen
    assert to_bytes(resources["requests"]["memory"]) >= measured_kib * 1024


def test_redis_persists_nothing_and_is_bounded(manifests):
    container = one(manifests, "Deployment", "pneumonia-redis")["spec"]["template"]["spec"]["containers"][0]
    args = container["args"]
    assert args[args.index("--save") + 1] == "" and args[args.index("--appendonly") + 1] == "no"
    assert args[args.index("--maxmemory-policy") + 1] == "volatile-ttl"
    assert to_bytes(args[args.index("--maxmemory") + 1].replace("mb", "Mi")) < to_bytes(
        container["resources"]["limits"]["memory"]
    )


def test_compose_redis_is_opt_in_and_persists_nothing():
    """docker-compose.yml: a plain `up` starts the service alone (in-memory store); `--profile shared` adds Redis."""
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    redis, service = compose["services"]["redis"], compose["services"]["pneumonia-service"]
    assert redis["profiles"] == ["shared"] and "profiles" not in service
    args = redis["command"]
    assert args[args.index("--save") + 1] == "" and args[args.index("--appendonly") + 1] == "no"
    assert "--maxmemory" in args and redis["read_only"] is True
    assert service["environment"]["PNEUMONIA_CACHE_URL"] == "${PNEUMONIA_CACHE_URL:-}"
    assert Settings(cache_url="").cache_url == ""  # what an unset variable becomes: the in-memory store


def test_the_pods_need_api_keys_from_a_secret_they_see_rotated(manifests):
    """The container listens on 0.0.0.0: without keys it would refuse to start (app/bind.py), so the manifest
    gives it the keys file from a Secret, mounted as a directory (a subPath mount never sees an update)."""
    container = api_container(manifests)
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["UVICORN_HOST"] == "0.0.0.0" and env["PNEUMONIA_ALLOW_ANONYMOUS"] == "false"
    keys_file = Path(env["PNEUMONIA_API_KEYS_FILE"])
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == str(keys_file.parent)]
    assert "subPath" not in mount and mount["readOnly"] is True
    pod = one(manifests, "Deployment", "pneumonia-service")["spec"]["template"]["spec"]
    volume = {v["name"]: v for v in pod["volumes"]}[mount["name"]]
    secret = one(manifests, "Secret", volume["secret"]["secretName"])
    assert keys_file.name in secret["stringData"] and "items" not in volume["secret"]
    assert volume["secret"]["defaultMode"] & 0o004  # the image's user (not root) must read it

    from app.keys import parse_keys

    shipped = parse_keys(secret["stringData"][keys_file.name])
    assert shipped.keys == {} and shipped.problems == []  # a placeholder: no real key committed, none invented
    assert env["PNEUMONIA_AUDIT_LOG"] == "/dev/stdout"  # the audit trail leaves with the pod's logs
    Settings(rate_limit=env["PNEUMONIA_RATE_LIMIT"])


def test_compose_needs_keys_or_the_explicit_flag_and_its_keys_example_fits():
    """docker-compose.yml listens on 0.0.0.0 in the container: anonymous only when asked for, loopback with the
    host override; docker-compose.keys.yml mounts a keys directory read-only and points the service at it."""
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())["services"]["pneumonia-service"]
    assert compose["environment"]["PNEUMONIA_ALLOW_ANONYMOUS"] == "${PNEUMONIA_ALLOW_ANONYMOUS:-false}"
    assert compose["environment"]["PNEUMONIA_API_KEYS_FILE"] == "${PNEUMONIA_API_KEYS_FILE:-}"
    host = (REPO_ROOT / "docker-compose.host.yml").read_text()  # `!reset` is Compose's tag, not plain YAML
    assert re.search(r"^\s+UVICORN_HOST: 127\.0\.0\.1$", host, re.MULTILINE)  # anonymous allowed: loopback only
    keys = yaml.safe_load((REPO_ROOT / "docker-compose.keys.yml").read_text())["services"]["pneumonia-service"]
    (volume,) = keys["volumes"]
    source, target, mode = volume.rsplit(":", 2)
    assert mode == "ro" and source.endswith("./secrets}")
    assert Path(keys["environment"]["PNEUMONIA_API_KEYS_FILE"]).parent == Path(target)
    assert "/secrets/" in (REPO_ROOT / ".gitignore").read_text().split()
    assert "secrets/" in (REPO_ROOT / ".dockerignore").read_text().split()  # never baked into an image
