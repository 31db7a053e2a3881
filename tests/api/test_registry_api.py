"""The model registry over HTTP: list, promote, roll back (a real folder registry, real artifacts)."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from fastapi.testclient import TestClient
from safetensors.torch import save_file

from services.api.app import create_app
from services.api.settings import ApiSettings
from services.registry.files import FileModelRegistry
from services.storage.sqlite_record_store import SqliteRecordStore
from services.storage.tiered_blob_store import TieredBlobStore
from services.vision.artifact import read_card, write_card
from services.vision.inspector import Inspector
from tests.api.conftest import API_KEY


def test_promote_and_roll_back_over_http(
    settings: ApiSettings,
    records: SqliteRecordStore,
    blobs: TieredBlobStore,
    tiny_inspector: Inspector,
    tmp_path: Path,
) -> None:
    registry = FileModelRegistry(tmp_path / "registry")
    source = tmp_path / "model"
    source.mkdir()
    save_file({"x": torch.zeros(1)}, str(source / "weights.safetensors"))  # (copied, never loaded here)
    write_card(tiny_inspector.card, source)
    registry.register(source, "housing-A", "ops")
    second = tmp_path / "model-2"
    shutil.copytree(source, second)
    write_card(read_card(second).model_copy(update={"version": "v2"}), second)
    registry.register(second, "housing-A", "ops")
    client = TestClient(
        create_app(settings, records, blobs, model_registry=registry), headers={"X-API-Key": API_KEY}
    )
    listed = client.get("/v1/registry").json()
    assert [v["version"] for v in listed["housing-A"]["versions"]] == [tiny_inspector.card.version, "v2"]
    first = tiny_inspector.card.version
    assert (
        client.post("/v1/registry/housing-A/promote", json={"actor": "ops", "version": first}).status_code
        == 200
    )
    answer = client.post("/v1/registry/housing-A/promote", json={"actor": "qa-lead", "version": "v2"})
    assert answer.status_code == 200 and answer.json()["production"] == "v2"
    back = client.post("/v1/registry/housing-A/rollback", json={"actor": "qa-lead"})
    assert back.status_code == 200 and back.json()["production"] == first
    assert back.json()["history"][-1]["actor"] == "qa-lead"
    assert client.post("/v1/registry/housing-A/rollback", json={"actor": "x"}).status_code == 409
    missing = client.post("/v1/registry/housing-A/promote", json={"actor": "x", "version": "nope"})
    assert missing.status_code == 404 and "no model version 'nope'" in missing.json()["detail"]
    assert client.post("/v1/registry/housing-A/promote", json={"actor": "x"}).status_code == 422
    without = TestClient(create_app(settings, records, blobs), headers={"X-API-Key": API_KEY})
    assert without.get("/v1/registry").status_code == 503
