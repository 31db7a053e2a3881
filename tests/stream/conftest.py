"""Fixtures for the line's tests: a detector trained once per session on the synthetic line."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from services.ingest.synthetic import write_dataset
from services.storage.file_blob_store import FileBlobStore
from services.storage.sqlite_record_store import SqliteRecordStore
from services.vision.inspector import Inspector
from services.vision.train import TrainConfig, train

TRAIN_PARTS = 40


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory, mobilenet_weights: Path) -> Path:
    root = tmp_path_factory.mktemp("synthetic-data")
    write_dataset(root, n_train=TRAIN_PARTS, n_test=0, seed=0)
    out = tmp_path_factory.mktemp("model")
    train(
        TrainConfig(
            data_root=root,
            category="synthetic",
            out_dir=out,
            weights=mobilenet_weights,
            activation="relu",
            progress=False,
        )
    )
    return out


@pytest.fixture(scope="session")
def inspector(model_dir: Path) -> Inspector:
    return Inspector.load(model_dir)


@pytest.fixture
def records(tmp_path: Path) -> Iterator[SqliteRecordStore]:
    store = SqliteRecordStore(tmp_path / "records.db")
    yield store
    store.close()


@pytest.fixture
def blobs(tmp_path: Path) -> FileBlobStore:
    return FileBlobStore(tmp_path / "blobs")
