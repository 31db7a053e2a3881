import subprocess
import sys
from pathlib import Path

import pytest

from services.storage.sqlite_record_store import SqliteRecordStore
from services.storage.stores import open_blob_store, open_record_store
from services.storage.tiered_blob_store import SMALL_BLOBS_FILE, TieredBlobStore
from services.storage.urls import file_url_to_path, sqlite_url_to_path


def test_sqlite_url_opens_a_sqlite_record_store(tmp_path: Path) -> None:
    store = open_record_store(f"sqlite:///{tmp_path}/records.db")
    try:
        assert isinstance(store, SqliteRecordStore)
        assert (tmp_path / "records.db").exists()
    finally:
        store.close()


def test_file_url_opens_files_with_a_small_blob_database_beside_them(tmp_path: Path) -> None:
    store = open_blob_store((tmp_path / "blobs").as_uri())
    assert isinstance(store, TieredBlobStore)
    try:
        assert store.root == (tmp_path / "blobs").resolve()
        assert (tmp_path / "blobs" / SMALL_BLOBS_FILE).is_file()
    finally:
        store.close()


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:///runs/records.db", "runs/records.db"),
        ("sqlite:////var/lib/linewatch/records.db", "/var/lib/linewatch/records.db"),
        ("sqlite:///:memory:", ":memory:"),
    ],
)
def test_sqlite_urls_follow_the_sqlalchemy_convention(url: str, path: str) -> None:
    assert sqlite_url_to_path(url) == path


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("file:///var/linewatch/blobs", Path("/var/linewatch/blobs")),
        ("file://localhost/var/linewatch/blobs", Path("/var/linewatch/blobs")),
        ("file:///var/line%20watch", Path("/var/line watch")),
        ("file:runs/blobs", Path("runs/blobs")),
    ],
)
def test_file_urls_follow_rfc_8089(url: str, path: Path) -> None:
    assert file_url_to_path(url) == path


def test_remote_file_hosts_are_refused() -> None:
    with pytest.raises(ValueError, match="only local files"):
        file_url_to_path("file://nas01/blobs")


def test_unknown_schemes_name_the_supported_ones() -> None:
    with pytest.raises(ValueError, match=r"'postgres' is not one of sqlite:"):
        open_record_store("postgres://db/linewatch")
    with pytest.raises(ValueError, match=r"'gs' is not one of file:, s3:"):
        open_blob_store("gs://bucket/blobs")
    with pytest.raises(ValueError, match="scheme '' is not one of"):
        open_record_store("records.db")


def test_adapters_are_imported_only_when_their_scheme_is_opened(tmp_path: Path) -> None:
    """Opening a SQLite store or a folder of frames imports neither other stores nor OpenCV's video."""
    code = f"""
import sys
from services.storage.stores import open_record_store
from services.ingest.urls import open_frame_source
assert "services.storage.sqlite_record_store" not in sys.modules
open_record_store("sqlite:///{tmp_path}/r.db").close()
open_frame_source("folder:///{tmp_path}")
loaded = [m for m in ("services.storage.tiered_blob_store", "services.ingest.video",
          "services.ingest.synthetic_source", "services.ingest.csv_replay") if m in sys.modules]
assert "services.storage.sqlite_record_store" in sys.modules and not loaded, loaded
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
