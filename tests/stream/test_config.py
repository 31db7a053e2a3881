"""Settings: the YAML file, environment overrides, and what the runtime gets from them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from services.config import LinewatchSettings, load_settings
from services.ingest.urls import open_frame_source, open_process_source

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def no_linewatch_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("LINEWATCH_"):
            monkeypatch.delenv(name)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "linewatch.yaml"
    path.write_text(text)
    return path


def test_the_file_gives_the_settings(tmp_path: Path) -> None:
    settings = load_settings(
        write(
            tmp_path,
            "keep_frames: false\n"
            "cameras: [cam-1, cam-2]\n"
            "models: {housing-A: models/a}\n"
            "batching: {max_batch: 4}\n"
            "process: {max_age_s: 1.5}\n",
        )
    )
    options = settings.line_options()
    assert options.keep_frames is False
    assert options.cameras == frozenset({"cam-1", "cam-2"})
    assert options.max_batch == 4
    assert options.max_wait_ms == 50.0  # the default, beside the value the file gave
    assert options.max_process_age_s == 1.5
    assert settings.models == {"housing-A": Path("models/a")}
    assert settings.frame_context().recipe == "housing-A"  # the only model's recipe


def test_the_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LINEWATCH_KEEP_FRAMES", "true")
    monkeypatch.setenv("LINEWATCH_BATCHING__MAX_WAIT_MS", "5")
    monkeypatch.setenv("LINEWATCH_CAMERAS", '["cam-9"]')
    monkeypatch.setenv("LINEWATCH_API_PORT", "9100")
    text = "keep_frames: false\nbatching: {max_batch: 4}\napi: {port: 9000, auth_required: false}\n"
    path = write(tmp_path, text)
    settings = load_settings(path)
    assert settings.keep_frames is True
    assert (settings.batching.max_batch, settings.batching.max_wait_ms) == (4, 5.0)
    assert settings.cameras == ["cam-9"]
    assert settings.api.port == 9100  # the API's own variable wins over the file
    assert settings.api.auth_required is False  # the file's value where the environment says nothing


def test_no_file_means_defaults() -> None:
    settings = load_settings(None)
    assert settings.stores.records.startswith("sqlite:///")
    assert settings.line_options().cameras is None


@pytest.mark.parametrize(
    "text", ["keep_frame: false\n", "batching: {max_batch: 0}\n", "- a list\n", "stores: {record: x}\n"]
)
def test_mistakes_in_the_file_are_refused(tmp_path: Path, text: str) -> None:
    with pytest.raises((ValidationError, ValueError)):
        load_settings(write(tmp_path, text))


def test_the_example_file_loads_and_its_sources_open() -> None:
    settings = load_settings(REPO / "linewatch.example.yaml")
    assert isinstance(settings, LinewatchSettings)
    assert settings.models
    for url in settings.frame_sources:
        assert open_frame_source(url, settings.frame_context()).name
    for url in settings.process_sources:
        assert open_process_source(url, settings.line_id).name


def test_detectors_run_in_worker_processes_unless_told_not_to(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert load_settings(None).inference_url() == "process://"
    assert load_settings(write(tmp_path, "detector_processes: false\n")).inference_url() == "local://"
    chosen = load_settings(write(tmp_path, "inference: local://?detectors=1\n"))
    assert chosen.inference_url() == "local://?detectors=1"
    monkeypatch.setenv("LINEWATCH_DETECTOR_PROCESSES", "false")
    assert load_settings(None).inference_url() == "local://"


def test_reading_the_settings_imports_no_torch() -> None:
    """The settings (and so `linewatch run --help`, the API's settings) load without torch."""
    code = "import sys, services.config; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
