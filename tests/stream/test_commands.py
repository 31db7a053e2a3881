"""The line's commands: demo, run and schemas."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from schemas.export import MODELS
from services.cli import main

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.integration
def test_demo_runs_a_synthetic_line_and_prints_the_summary(tmp_path: Path, mobilenet_weights: Path) -> None:
    command = [
        sys.executable,
        "-m",
        "services.cli",
        "demo",
        "--parts",
        "30",
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
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "summary" in out
    assert "frames        30 in, 30 inspected, 0 dead-lettered" in out
    assert re.search(r"NG rate +\d+\.\d% \(\d+ NG of 30\)", out)
    assert "dead letters  0 (none)" in out
    assert re.search(r"throughput +\d+\.\d frames/s", out)
    assert re.search(r"latency +p50 \d+ ms, p99 \d+ ms", out)
    assert (tmp_path / "demo" / "records.db").is_file()
    assert (tmp_path / "demo" / "model" / "card.json").is_file()
    # the command it prints to look again works from anywhere: the key, and linewatch by its path
    lines = out.splitlines()
    serve = lines[next(i for i, line in enumerate(lines) if line.startswith("look again")) + 1]
    match = re.fullmatch(r"  LINEWATCH_API_KEYS='([^']+)' (\S+) serve --records (\S+) --blobs (\S+)", serve)
    assert match is not None, serve
    assert Path(match.group(2)).is_file() and os.access(match.group(2), os.X_OK)

    # a second demo keeps the first one's records
    again = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    (kept,) = (tmp_path / "demo" / "previous").iterdir()
    assert f"kept the earlier run's records and blobs in {kept}" in again.stdout
    assert (kept / "records.db").is_file() and (kept / "blobs").is_dir()


def test_schemas_export_writes_and_checks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schemas", "export", str(tmp_path)]) == 0
    assert len(list(tmp_path.glob("*.schema.json"))) == len(MODELS)
    assert main(["schemas", "export", str(tmp_path), "--check"]) == 0
    (tmp_path / "Frame.schema.json").write_text("{}")
    capsys.readouterr()
    assert main(["schemas", "export", str(tmp_path), "--check"]) == 1
    assert "stale: Frame.schema.json" in capsys.readouterr().out


def test_run_says_what_is_wrong_with_the_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "linewatch.yaml"
    config.write_text("frame_sources: ['ftp://camera']\n")
    assert main(["run", "--config", str(config)]) == 2
    assert "unsupported frame source 'ftp://camera'" in capsys.readouterr().err
    assert main(["run", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_run_refuses_to_serve_without_api_keys_or_on_a_taken_port(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [n for n in os.environ if n.startswith("LINEWATCH_")]:
        monkeypatch.delenv(name)
    config = tmp_path / "linewatch.yaml"
    stores = f"stores: {{records: 'sqlite:///{tmp_path / 'r.db'}', blobs: '{(tmp_path / 'b').as_uri()}'}}\n"
    config.write_text("frame_sources: ['synthetic://?parts=1']\n" + stores)
    assert main(["run", "--config", str(config), "--serve"]) == 2
    assert "requires keys" in capsys.readouterr().err

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        monkeypatch.setenv("LINEWATCH_API_AUTH_REQUIRED", "false")
        monkeypatch.setenv("LINEWATCH_API_PORT", str(taken.getsockname()[1]))
        assert main(["run", "--config", str(config), "--serve"]) == 2
    assert "did not start" in capsys.readouterr().err
