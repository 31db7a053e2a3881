"""Group commit: blobs put without waiting for the disk, made durable together by ``sync``.

The flushes themselves cannot be observed without pulling the power, so the tests count and check
the calls that make them (``syncfs``, and the fsyncs used where ``syncfs`` does not exist) on real
files and a real SQLite database; one test runs the real ``syncfs``."""

from __future__ import annotations

import errno
import os
import sqlite3
from pathlib import Path

import pytest

from services.storage import durability, file_blob_store, sqlite_blob_store
from services.storage.errors import BlobStoreFull
from services.storage.file_blob_store import FileBlobStore
from services.storage.sqlite_blob_store import SqliteBlobStore
from services.storage.stores import open_blob_store
from services.storage.tiered_blob_store import TieredBlobStore

FRAME = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 400  # 100 KB
HEATMAP = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 16  # 4 KB


def frame(i: int) -> bytes:
    return FRAME + i.to_bytes(4, "little")


class Flushes:
    """Stands in for ``sync_filesystem`` (and ``fsync_path``): records the calls, flushes nothing."""

    def __init__(self, syncfs: bool = True, fail: int | None = None) -> None:
        self.syncfs, self.fail = syncfs, fail
        self.filesystems: list[Path] = []
        self.paths: list[Path] = []

    def sync_filesystem(self, path: Path) -> bool:
        if self.fail is not None:
            raise OSError(self.fail, os.strerror(self.fail))
        self.filesystems.append(path)
        return self.syncfs

    def fsync_path(self, path: Path) -> None:
        durability.fsync_path(path)  # (a real fsync: the path must exist)
        self.paths.append(path)


@pytest.fixture
def flushes(monkeypatch: pytest.MonkeyPatch) -> Flushes:
    flushes = Flushes()
    for module in (file_blob_store, sqlite_blob_store):
        monkeypatch.setattr(module, "sync_filesystem", flushes.sync_filesystem)
        monkeypatch.setattr(module, "fsync_path", flushes.fsync_path)
    return flushes


def test_puts_wait_for_one_sync_and_a_sync_with_nothing_new_flushes_nothing(
    tmp_path: Path, flushes: Flushes
) -> None:
    store = FileBlobStore(tmp_path / "blobs", group_commit=True)
    refs = [store.put(frame(i), "png", 64, 32) for i in range(5)]
    assert [store.get(ref.uri) for ref in refs] == [frame(i) for i in range(5)]  # readable at once
    assert flushes.filesystems == [] and flushes.paths == []  # no fsync per put
    store.sync()
    assert flushes.filesystems == [store.root]
    store.sync()
    assert flushes.filesystems == [store.root]


def test_without_group_commit_every_put_flushes_its_file_and_folder(tmp_path: Path, flushes: Flushes) -> None:
    store = FileBlobStore(tmp_path / "blobs")
    ref = store.put(frame(0), "png", 64, 32)
    assert flushes.paths == [Path(ref.uri.removeprefix("file://")).parent]  # (the file: os.fsync)
    store.sync()
    assert flushes.filesystems == []


def test_where_syncfs_is_missing_the_files_then_their_folders_are_fsynced(
    tmp_path: Path, flushes: Flushes
) -> None:
    flushes.syncfs = False
    store = FileBlobStore(tmp_path / "blobs", group_commit=True)
    refs = [store.put(frame(i), "png", 64, 32) for i in range(3)]
    files = {Path(ref.uri.removeprefix("file://")) for ref in refs}
    store.delete(refs[2].uri)  # deleted before the sync: nothing to flush, no error
    store.sync()
    flushed_files = [path for path in flushes.paths if path.is_file()]
    assert set(flushed_files) == files - {Path(refs[2].uri.removeprefix("file://"))}
    assert {path.parent for path in files} <= set(flushes.paths)
    last_file = max(flushes.paths.index(path) for path in flushed_files)
    assert all(flushes.paths.index(path.parent) > last_file for path in files)


def test_a_refused_sync_is_a_clear_error_and_the_blobs_stay_to_be_synced(
    tmp_path: Path, flushes: Flushes
) -> None:
    store = FileBlobStore(tmp_path / "blobs", group_commit=True)
    store.put(frame(0), "png", 64, 32)
    flushes.fail = errno.ENOSPC
    with pytest.raises(BlobStoreFull, match="is full"):
        store.sync()
    flushes.fail = None
    store.sync()  # tried again
    assert flushes.filesystems == [store.root]


def test_a_blob_left_short_by_a_crash_before_its_sync_is_written_again(tmp_path: Path) -> None:
    store = FileBlobStore(tmp_path / "blobs", group_commit=True)
    ref = store.put(frame(0), "png", 64, 32)
    path = Path(ref.uri.removeprefix("file://"))
    path.write_bytes(b"")  # what a power cut can leave of a file whose data was never flushed
    again = store.put(frame(0), "png", 64, 32)
    assert again == ref and store.get(ref.uri) == frame(0)


def test_the_small_blob_store_flushes_its_log_at_sync_not_at_each_put(
    tmp_path: Path, flushes: Flushes
) -> None:
    grouped, single = (
        SqliteBlobStore(tmp_path / "g.db", group_commit=True),
        SqliteBlobStore(tmp_path / "s.db"),
    )
    try:
        assert grouped._db.execute("PRAGMA synchronous").fetchone() == (1,)  # NORMAL: no fsync per commit
        assert single._db.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL
        grouped.sync()
        assert flushes.filesystems == []  # nothing put yet
        grouped.put(HEATMAP, "png", 8, 8)
        grouped.sync()
        grouped.sync()
        assert flushes.filesystems == [tmp_path]
        flushes.syncfs = False
        grouped.put(HEATMAP + b"2", "png", 8, 8)
        grouped.sync()
        assert flushes.paths == [tmp_path / "g.db-wal"]
    finally:
        grouped.close()
        single.close()
    with sqlite3.connect(tmp_path / "g.db") as db:
        assert db.execute("SELECT COUNT(*) FROM blobs").fetchone() == (2,)


def test_open_blob_store_with_group_commit_syncs_frames_and_heat_maps_with_the_real_syncfs(
    tmp_path: Path,
) -> None:
    store = open_blob_store((tmp_path / "blobs").as_uri(), group_commit=True)
    assert isinstance(store, TieredBlobStore)
    assert store.files.group_commit and store.small.group_commit
    try:
        refs = [store.put(frame(0), "png", 64, 32), store.put(HEATMAP, "png", 8, 8)]
        store.sync()  # the real syncfs(2) on Linux, fsyncs elsewhere
        assert [store.get(ref.uri) for ref in refs] == [frame(0), HEATMAP]
        assert not store.files._unsynced and not store.small._unsynced
    finally:
        store.close()
