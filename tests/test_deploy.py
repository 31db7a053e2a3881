"""Deployment files, checked without a Docker engine (none runs on the development machines)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from services.config import load_settings

ROOT = Path(__file__).resolve().parents[1]


def test_compose_file_runs_the_line_with_the_api_and_mounts_what_it_needs() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    service = compose["services"]["linewatch"]
    assert service["build"]["dockerfile"] == "deploy/Dockerfile"
    assert (ROOT / service["build"]["dockerfile"]).is_file()
    assert service["command"][:3] == ["run", "--config", "/etc/linewatch/linewatch.yaml"]
    assert "127.0.0.1:8000:8000" in service["ports"]
    mounts = {volume.split(":")[1] for volume in service["volumes"]}
    assert {"/etc/linewatch/linewatch.yaml", "/var/linewatch/models"} <= mounts
    assert "LINEWATCH_API_KEY_HASHES" in service["environment"]


def test_dockerfile_installs_with_the_constraints_and_runs_unprivileged() -> None:
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    assert "-c constraints.txt" in dockerfile
    assert "USER linewatch" in dockerfile
    assert '"linewatch"' in dockerfile


def test_example_config_is_valid_settings() -> None:
    settings = load_settings(ROOT / "linewatch.example.yaml")
    assert settings.models


@pytest.mark.skipif(
    shutil.which("docker-compose") is None, reason="docker-compose (Debian's 1.29) not installed"
)
def test_compose_config_validates() -> None:
    result = subprocess.run(
        ["docker-compose", "-f", str(ROOT / "docker-compose.yml"), "config", "-q"],
        capture_output=True,
        text=True,
        env={"LINEWATCH_API_KEY_HASHES": "0" * 64, "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
