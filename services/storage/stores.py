"""Open a store by URL, the way every linewatch setting names one: ``sqlite:///runs/records.db``
(relative; ``sqlite:////abs/path.db`` is absolute), ``https://es.plant:9200/linewatch`` (Elasticsearch),
``file:///var/linewatch/blobs`` or
``s3://BUCKET/PREFIX?endpoint_url=…`` (S3 or an S3-compatible object store, for clusters).

Each scheme's adapter is imported only when a URL with that scheme is opened."""

from __future__ import annotations

from typing import cast

from services.adapters import load_adapter
from services.storage.ports import BlobStore, LabelStore, RecordStore

RECORD_STORES = {
    "sqlite": "services.storage.stores:_sqlite_records",
    "http": "services.storage.stores:_elasticsearch_records",
    "https": "services.storage.stores:_elasticsearch_records",
}
LABEL_STORES = {
    "sqlite": "services.storage.stores:_sqlite_labels",
    "mongodb": "services.storage.stores:_mongo_labels",
    "mongodb+srv": "services.storage.stores:_mongo_labels",
}
BLOB_STORES = {"file": "services.storage.stores:_file_blobs", "s3": "services.storage.stores:_s3_blobs"}


def _sqlite_records(url: str) -> RecordStore:
    from services.storage.sqlite_record_store import SqliteRecordStore
    from services.storage.urls import sqlite_url_to_path

    return SqliteRecordStore(sqlite_url_to_path(url))


def _elasticsearch_records(url: str) -> RecordStore:
    from services.storage.elasticsearch_record_store import ElasticsearchRecordStore

    return ElasticsearchRecordStore(url)


def _sqlite_labels(url: str) -> LabelStore:
    from services.storage.sqlite_label_store import SqliteLabelStore
    from services.storage.urls import sqlite_url_to_path

    return SqliteLabelStore(sqlite_url_to_path(url))


def _mongo_labels(url: str) -> LabelStore:
    from services.storage.mongo_label_store import MongoLabelStore

    return MongoLabelStore(url)


def _file_blobs(url: str, group_commit: bool) -> BlobStore:
    from services.storage.tiered_blob_store import TieredBlobStore
    from services.storage.urls import file_url_to_path

    return TieredBlobStore.at(file_url_to_path(url), group_commit=group_commit)


def _s3_blobs(url: str, group_commit: bool) -> BlobStore:
    from services.storage.s3_blob_store import S3BlobStore

    return S3BlobStore.from_url(url)  # (each put is durable when it returns: no group commit)


def open_record_store(url: str) -> RecordStore:
    """The record store named by ``url``; supported schemes: sqlite, http(s) (Elasticsearch)."""
    opener = load_adapter(RECORD_STORES, url, "record store URL", "sqlite:///runs/records.db")
    return cast(RecordStore, opener(url))


def open_label_store(url: str) -> LabelStore:
    """The label store named by ``url``; supported schemes: sqlite (``sqlite:///runs/labels.db``)
    and mongodb (``mongodb://host:27017/linewatch``: the path names the database)."""
    opener = load_adapter(LABEL_STORES, url, "label store URL", "sqlite:///runs/labels.db")
    return cast(LabelStore, opener(url))


def open_blob_store(url: str, group_commit: bool = False) -> BlobStore:
    """The blob store named by ``url``; supported schemes: file (frames as files under the
    directory, heat maps and other small blobs in its ``small-blobs.db``) and s3. With ``group_commit``
    puts become durable at the store's ``sync`` (the line calls it once per group of records)."""
    opener = load_adapter(BLOB_STORES, url, "blob store URL", "file:///var/linewatch/blobs")
    return cast(BlobStore, opener(url, group_commit))
