"""Deployment files, checked without a Docker engine or a cluster (none runs on the development
machines): docker-compose.yml with Debian's docker-compose 1.29 (`config -q`, installed by
`make compose`), the Kubernetes manifests with kubernetes-validate (offline schemas, --strict), and
that the images, ports, commands and variables they name match the code."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from services.api.settings import ApiSettings
from services.cli import build_parser
from services.config import LinewatchSettings, load_settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_ENV = {"LINEWATCH_API_KEY_HASHES": "0" * 64, "ELASTIC_PASSWORD": "x", "MONGO_PASSWORD": "y"}
K8S = sorted((ROOT / "deploy" / "k8s").glob("*.yaml"))


def compose() -> dict[str, Any]:
    return dict(yaml.safe_load((ROOT / "docker-compose.yml").read_text()))


def manifests() -> list[dict[str, Any]]:
    return [doc for path in K8S for doc in yaml.safe_load_all(path.read_text()) if doc]


def setting_exists(variable: str) -> bool:
    """Whether ``LINEWATCH_…`` names a setting (nested with ``__``) or an API setting."""
    if (
        variable.startswith("LINEWATCH_API_")
        and variable[len("LINEWATCH_API_") :].lower() in ApiSettings.model_fields
    ):
        return True
    model: type[BaseModel] = LinewatchSettings
    parts = variable[len("LINEWATCH_") :].lower().split("__")
    for i, part in enumerate(parts):
        field = model.model_fields.get(part)
        if field is None:
            return False
        annotation = field.annotation
        if i < len(parts) - 1:
            if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
                return False
            model = annotation
    return True


def parses_as_a_command(args: list[str]) -> None:
    build_parser().parse_args(args)  # exits (SystemExit) on an unknown command or option


def test_compose_runs_the_distributed_line() -> None:
    services = compose()["services"]
    assert {
        "kafka",
        "triton",
        "ingest",
        "ingest-process",
        "worker",
        "api",
        "elasticsearch",
        "kibana",
        "mongodb",
    } <= set(services)
    assert services["kafka"]["image"].startswith("apache/kafka:")  # KRaft, no ZooKeeper
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert services["triton"]["build"]["dockerfile"] == "deploy/Dockerfile.triton"
    assert "gpu" in services["triton-gpu"]["profiles"]
    devices = services["triton-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    for name in ("kafka", "triton", "api", "elasticsearch", "mongodb"):
        assert "healthcheck" in services[name], name
    assert services["worker"]["depends_on"]["triton"]["condition"] == "service_healthy"


STORE_CREDENTIALS = {"LINEWATCH_ES_PASSWORD", "LINEWATCH_ES_API_KEY"}


def test_compose_commands_variables_and_addresses_match_the_code() -> None:
    assert not setting_exists("LINEWATCH_KAFKA__NOPE") and not setting_exists("LINEWATCH_INFERENCE__X")
    services = compose()["services"]
    linewatch = [s for s in services.values() if s.get("image") == "linewatch:latest"]
    assert len(linewatch) == 4
    env: dict[str, str] = {}
    for service in linewatch:
        parses_as_a_command(service["command"])
        for variable, value in service["environment"].items():
            if variable in STORE_CREDENTIALS:  # read by the Elasticsearch store, not a setting
                continue
            if variable.startswith("LINEWATCH_"):
                assert setting_exists(variable), variable
                env[variable] = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", str(value))
    # the mounted config with the services' overrides is valid, and points at the compose services
    mounted = next(
        v for v in services["worker"]["volumes"] if v.endswith(":/etc/linewatch/linewatch.yaml:ro")
    )
    config = ROOT / mounted.split(":")[0]
    env.pop("LINEWATCH_API_KEY_HASHES", None)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        settings = load_settings(config)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    assert settings.kafka.bootstrap_servers == "kafka:9092"
    advertised = services["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    assert "PLAINTEXT://kafka:9092" in advertised
    assert settings.inference_url() == "triton://triton:8001"  # Triton's gRPC port
    assert settings.stores.records.startswith("sqlite:////var/linewatch/runs/")  # on the shared volume
    assert all("linewatch-data:/var/linewatch/runs" in s["volumes"] for s in linewatch)
    # the workers' sink is the Elasticsearch service, its password from the environment
    assert str(settings.kafka.sink_records).startswith("http://elastic@elasticsearch:9200/")
    assert "LINEWATCH_ES_PASSWORD" in services["worker"]["environment"]


def test_dockerfiles_install_with_the_constraints() -> None:
    app = (ROOT / "deploy" / "Dockerfile").read_text()
    assert "-c constraints.txt" in app and "USER linewatch" in app and '"linewatch"' in app
    cuda = (ROOT / "deploy" / "Dockerfile.cuda").read_text()
    assert cuda.startswith("#") and "FROM nvidia/cuda:" in cuda and "-c constraints.txt" in cuda
    triton = (ROOT / "deploy" / "Dockerfile.triton").read_text()
    # NGC 24.10 ships tritonserver 2.51, the server the tests run (nvidia-pytriton 0.7.0)
    assert "FROM nvcr.io/nvidia/tritonserver:24.10-py3" in triton
    assert "import services.inference.triton_backend" in triton


def test_example_config_is_valid_settings() -> None:
    settings = load_settings(ROOT / "linewatch.example.yaml")
    assert settings.models


@pytest.mark.skipif(
    shutil.which("docker-compose") is None, reason="docker-compose (make compose) not installed"
)
def test_compose_config_validates() -> None:
    def check(*extra: str, env: dict[str, str] = COMPOSE_ENV) -> subprocess.CompletedProcess[str]:
        command = ["docker-compose", "-f", str(ROOT / "docker-compose.yml"), *extra, "config", "-q"]
        return subprocess.run(command, capture_output=True, text=True, env=env | {"PATH": "/usr/bin:/bin"})

    result = check()
    assert result.returncode == 0, result.stderr
    result = check("--profile", "gpu")
    assert result.returncode == 0, result.stderr
    missing = check(env={k: v for k, v in COMPOSE_ENV.items() if k != "LINEWATCH_API_KEY_HASHES"})
    assert missing.returncode != 0 and "linewatch serve --hash-key" in missing.stderr


def test_kubernetes_manifests_validate_strictly() -> None:
    validate = Path(sys.executable).parent / "kubernetes-validate"
    result = subprocess.run([str(validate), "--strict", *map(str, K8S)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "failed" not in result.stdout.lower()


def test_kubernetes_manifests_match_the_code() -> None:
    docs = manifests()
    by_kind: dict[str, dict[str, dict[str, Any]]] = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], {})[doc["metadata"]["name"]] = doc
    config = yaml.safe_load(by_kind["ConfigMap"]["linewatch-config"]["data"]["linewatch.yaml"])
    settings = LinewatchSettings(**config)
    assert settings.inference_url() == "triton://triton:8001"
    assert settings.kafka.security_protocol == "SASL_SSL"
    for name, deployment in by_kind["Deployment"].items():
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        if name == "triton":
            assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
            assert {p["containerPort"] for p in container["ports"]} == {8000, 8001, 8002}
            continue
        parses_as_a_command(container["args"])
        for variable in container.get("env", []):
            assert setting_exists(variable["name"]), variable["name"]
    for variable in by_kind["Secret"]["linewatch"]["stringData"]:
        assert setting_exists(variable), variable
    assert by_kind["Service"]["triton"]["spec"]["ports"][0]["port"] == 8001
    scaled = by_kind["ScaledObject"]["linewatch-worker"]
    assert scaled["spec"]["scaleTargetRef"]["name"] in by_kind["Deployment"]
    trigger = scaled["spec"]["triggers"][0]
    assert trigger["type"] == "kafka"
    assert trigger["metadata"]["consumerGroup"] == settings.kafka.app_id  # Faust's group is its app id
    assert trigger["metadata"]["topic"] == settings.kafka.topics.frames
    assert scaled["spec"]["maxReplicaCount"] <= settings.kafka.partitions  # more would sit idle
