"""Fixtures for the API tests: a real SQLite record store and file blob store in tmp_path."""

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from services.api.app import create_app
from services.api.settings import ApiSettings
from services.inference.local import LocalInference
from services.inference.thread import InferenceThread
from services.ingest.synthetic import write_dataset
from services.storage.sqlite_record_store import SqliteRecordStore
from services.storage.tiered_blob_store import TieredBlobStore
from services.vision.inspector import Inspector
from services.vision.train import TrainConfig, train

API_KEY = "test-key-3f9c1a"


@pytest.fixture(autouse=True)
def _no_api_settings_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests set what they need; nothing leaks in from the environment they run in."""
    for name in ("HOST", "PORT", "KEY_HASHES", "KEYS", "MAX_REQUEST_BYTES", "AUTH_REQUIRED"):
        monkeypatch.delenv(f"LINEWATCH_API_{name}", raising=False)


@pytest.fixture
def records(tmp_path: Path) -> Iterator[SqliteRecordStore]:
    with SqliteRecordStore(tmp_path / "records.db") as store:
        yield store


@pytest.fixture
def blobs(tmp_path: Path) -> Iterator[TieredBlobStore]:
    """The blob store `linewatch serve` opens: frames as files, heat maps in small-blobs.db."""
    store = TieredBlobStore.at(tmp_path / "blobs")
    yield store
    store.close()


@pytest.fixture
def settings() -> ApiSettings:
    return ApiSettings(keys=[API_KEY])


@pytest.fixture
def client(settings: ApiSettings, records: SqliteRecordStore, blobs: TieredBlobStore) -> TestClient:
    """A client of the API without a model that sends the right key."""
    return TestClient(create_app(settings, records, blobs), headers={"X-API-Key": API_KEY})


@pytest.fixture(scope="session")
def tiny_inspector(tmp_path_factory: pytest.TempPathFactory, mobilenet_weights: Path) -> Inspector:
    """PatchCore trained on 40 synthetic good housings (about 15 s, once per session)."""
    root = tmp_path_factory.mktemp("tiny-model")
    write_dataset(root / "data", n_train=40, n_test=0, seed=0)
    config = TrainConfig(
        data_root=root / "data",
        category="synthetic",
        out_dir=root / "model",
        weights=mobilenet_weights,
        activation="relu",
        progress=False,
    )
    train(config)
    return Inspector.load(root / "model")


@pytest.fixture(scope="session")
def tiny_inference(tiny_inspector: Inspector) -> Iterator[InferenceThread]:
    """The tiny model for recipe housing-A behind a started local inference port, as the API uses it."""
    inference = InferenceThread(LocalInference({"housing-A": tiny_inspector}, detectors=1))
    inference.start_in_thread()
    yield inference
    inference.close_thread()
