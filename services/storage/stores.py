"""Open a store by URL, the way every linewatch setting names one: ``sqlite:///runs/records.db``
(relative; ``sqlite:////abs/path.db`` is absolute) or ``file:///var/linewatch/blobs``."""

from services.storage.ports import BlobStore, RecordStore
from services.storage.sqlite_record_store import SqliteRecordStore
from services.storage.tiered_blob_store import TieredBlobStore
from services.storage.urls import file_url_to_path, sqlite_url_to_path

RECORD_STORE_SCHEMES = ("sqlite",)
BLOB_STORE_SCHEMES = ("file",)


def _scheme(url: str) -> str:
    scheme, colon, _ = url.partition(":")
    return scheme.lower() if colon else ""


def open_record_store(url: str) -> RecordStore:
    """The record store named by ``url``; supported schemes: sqlite."""
    scheme = _scheme(url)
    if scheme == "sqlite":
        return SqliteRecordStore(sqlite_url_to_path(url))
    raise ValueError(
        f"unsupported record store URL {url!r}: scheme {scheme!r} is not one of "
        f"{', '.join(s + '://' for s in RECORD_STORE_SCHEMES)} (e.g. sqlite:///runs/records.db)"
    )


def open_blob_store(url: str, group_commit: bool = False) -> BlobStore:
    """The blob store named by ``url``; supported schemes: file (frames as files under the
    directory, heat maps and other small blobs in its ``small-blobs.db``). With ``group_commit``
    puts become durable at the store's ``sync`` (the line calls it once per group of records)."""
    scheme = _scheme(url)
    if scheme == "file":
        return TieredBlobStore.at(file_url_to_path(url), group_commit=group_commit)
    raise ValueError(
        f"unsupported blob store URL {url!r}: scheme {scheme!r} is not one of "
        f"{', '.join(s + '://' for s in BLOB_STORE_SCHEMES)} (e.g. file:///var/linewatch/blobs)"
    )
