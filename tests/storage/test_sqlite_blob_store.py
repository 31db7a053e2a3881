"""The small-blob store on a real SQLite file, and the tiered store that puts heat maps in it."""

import errno
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.storage.errors import BlobCorrupted, BlobStoreFull
from services.storage.ports import BlobStore
from services.storage.sqlite_blob_store import SqliteBlobStore
from services.storage.tiered_blob_store import SMALL_BLOBS_FILE, TieredBlobStore

HEATMAP = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 16  # 4 KB
FRAME = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 400  # 100 KB


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteBlobStore]:
    store = SqliteBlobStore(tmp_path / "small.db")
    yield store
    store.close()


def rows(path: Path) -> list[tuple[str, int]]:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT name, length(data) FROM blobs ORDER BY name").fetchall()


def test_put_then_get_returns_the_bytes_by_content_address(store: SqliteBlobStore) -> None:
    port: BlobStore = store
    ref = port.put(HEATMAP, "png", width=128, height=96)
    assert ref.uri == f"sqlite-blob:{ref.sha256}.png"
    assert (ref.size_bytes, ref.width, ref.height, ref.encoding) == (len(HEATMAP), 128, 96, "png")
    assert port.exists(ref.uri)
    assert port.get(ref.uri) == HEATMAP


def test_put_is_idempotent_and_durable_on_return(store: SqliteBlobStore) -> None:
    first = store.put(HEATMAP, "png", 128, 96)
    assert store.put(HEATMAP, "png", 128, 96) == first
    assert rows(store.path) == [(f"{first.sha256}.png", len(HEATMAP))]  # another connection sees it


def test_delete_removes_the_blob_and_tolerates_a_second_delete(store: SqliteBlobStore) -> None:
    ref = store.put(HEATMAP, "png", 128, 96)
    store.delete(ref.uri)
    store.delete(ref.uri)
    assert not store.exists(ref.uri)
    with pytest.raises(FileNotFoundError, match="blob not found"):
        store.get(ref.uri)


def test_corruption_is_detected_on_get(store: SqliteBlobStore) -> None:
    ref = store.put(HEATMAP, "png", 128, 96)
    with sqlite3.connect(store.path) as db:
        db.execute("UPDATE blobs SET data = ? WHERE name = ?", (HEATMAP[:-1] + b"!", f"{ref.sha256}.png"))
    with pytest.raises(BlobCorrupted, match="corrupted"):
        store.get(ref.uri)


@pytest.mark.parametrize(
    "uri",
    ["file:///etc/passwd", "sqlite-blob:../secret.png", "sqlite-blob:" + "a" * 64, "sqlite-blob:x.png"],
)
def test_uris_that_do_not_name_a_blob_are_refused(store: SqliteBlobStore, uri: str) -> None:
    for operation in (store.get, store.exists, store.delete):
        with pytest.raises(ValueError, match="does not name a blob"):
            operation(uri)


def test_unknown_encoding_is_refused_before_writing(store: SqliteBlobStore) -> None:
    with pytest.raises(ValueError, match="unsupported blob encoding"):
        store.put(HEATMAP, "gif", 128, 96)
    assert rows(store.path) == []


def test_a_full_database_raises_blob_store_full_and_keeps_what_was_stored(store: SqliteBlobStore) -> None:
    kept = store.put(HEATMAP, "png", 128, 96)
    (pages,) = store._db.execute("PRAGMA page_count").fetchone()
    store._db.execute(f"PRAGMA max_page_count = {pages}")  # SQLite's own "database or disk is full"
    with pytest.raises(BlobStoreFull, match="is full") as caught:
        store.put(FRAME, "png", 256, 256)
    assert caught.value.errno == errno.ENOSPC
    assert rows(store.path) == [(f"{kept.sha256}.png", len(HEATMAP))]
    assert store.get(kept.uri) == HEATMAP


def test_threads_share_one_store(store: SqliteBlobStore) -> None:
    blobs = [HEATMAP + bytes([i]) for i in range(40)]
    refs: list[str] = []

    def put(part: list[bytes]) -> None:
        refs.extend(store.put(data, "png", 1, 1).uri for data in part)

    threads = [threading.Thread(target=put, args=(blobs[i::4],)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(store.get(uri) for uri in refs) == sorted(blobs)


def test_the_tiered_store_keeps_heat_maps_in_sqlite_and_frames_as_files(tmp_path: Path) -> None:
    tiered = TieredBlobStore.at(tmp_path / "blobs")
    port: BlobStore = tiered
    try:
        heatmap, frame = port.put(HEATMAP, "png", 128, 96), port.put(FRAME, "png", 256, 256)
        assert heatmap.uri.startswith("sqlite-blob:") and frame.uri.startswith("file:///")
        assert rows(tmp_path / "blobs" / SMALL_BLOBS_FILE) == [(f"{heatmap.sha256}.png", len(HEATMAP))]
        assert [p.name for p in (tmp_path / "blobs").rglob("*.png")] == [f"{frame.sha256}.png"]
        assert (port.get(heatmap.uri), port.get(frame.uri)) == (HEATMAP, FRAME)
        port.delete(frame.uri)
        assert not port.exists(frame.uri) and port.exists(heatmap.uri)
        port.delete(heatmap.uri)
        assert not port.exists(heatmap.uri)
    finally:
        port.close()


def test_the_tiered_store_reads_blobs_written_as_files_before(tmp_path: Path) -> None:
    files_only = TieredBlobStore.at(tmp_path / "blobs", small_max_bytes=0)  # e.g. an older linewatch
    old = files_only.put(HEATMAP, "png", 128, 96)
    files_only.close()
    tiered = TieredBlobStore.at(tmp_path / "blobs")
    try:
        assert old.uri.startswith("file:///") and tiered.get(old.uri) == HEATMAP
    finally:
        tiered.close()
