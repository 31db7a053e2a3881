"""`linewatch demo --distributed`: a local broker, producers and two Faust workers, one command."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.integration
def test_the_distributed_demo_stores_every_part(tmp_path: Path, mobilenet_weights: Path) -> None:
    command = [
        sys.executable,
        "-m",
        "services.cli",
        "demo",
        "--distributed",
        "--workers",
        "2",
        "--parts",
        "12",
        "--no-serve",
        "--train-parts",
        "20",
        "--workdir",
        str(tmp_path / "demo"),
        "--weights",
        str(mobilenet_weights),
        "--activation",
        "relu",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "frames        12 published, 12 inspected, 0 dead letters" in result.stdout
    assert re.search(r"workers +2 \(exit codes 0, 0\)", result.stdout)
    logs = [(tmp_path / "demo" / f"worker-{i}.log").read_text() for i in range(2)]
    assert all("process history:" in log for log in logs)
