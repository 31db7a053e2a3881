"""LabelStore adapter on MongoDB (``mongodb://host:27017/linewatch``; pymongo).

One document per frame in the ``labels`` collection, ``_id`` = ``frame_id``: the fields the store
filters and sorts by (times as BSON dates), the label itself as its JSON (``record``, the contract's
own serialisation, read back as written), and its history in the same document (``history``, JSON
entries appended by the same update), so a label never changes without its history entry even on a
standalone server, where MongoDB has no multi-document transactions.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

from pymongo import ASCENDING, DESCENDING, MongoClient, ReturnDocument
from pymongo.errors import BulkWriteError, PyMongoError

from schemas.label import Label, LabelEvent, Review
from services.storage.errors import LabelConflict, LabelNotFound
from services.storage.label_changes import first_event, reviewed
from services.storage.label_query import LabelQuery

DEFAULT_DATABASE = "linewatch"
DUPLICATE_KEY = 11000
REVIEWED_FIELDS = ("status", "decision", "reviewer", "revision", "record")  # what a review changes


class MongoLabelStore:
    """Labels in MongoDB (or a server speaking its wire protocol). The database is the URL's path
    (``linewatch`` when it has none); credentials and options follow MongoDB's connection strings."""

    def __init__(self, url: str, timeout_s: float = 10.0) -> None:
        self.url = url
        database = urlsplit(url).path.strip("/") or DEFAULT_DATABASE
        self._client: MongoClient[dict[str, Any]] = MongoClient(
            url, tz_aware=True, serverSelectionTimeoutMS=int(timeout_s * 1000)
        )
        try:
            self._labels = self._client[database]["labels"]
            self._labels.create_index(
                [("status", ASCENDING), ("priority", DESCENDING), ("captured_at", ASCENDING)]
            )
            self._labels.create_index([("captured_at", DESCENDING)])
            self._labels.create_index([("queued_at", ASCENDING)])
        except PyMongoError as error:
            self._client.close()
            raise ConnectionError(f"label store {_redacted(url)} could not be reached: {error}") from error

    def __enter__(self) -> MongoLabelStore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    def add_labels(self, labels: Sequence[Label], actor: str = "linewatch") -> int:
        documents = [_document(label, [first_event(label, actor)]) for label in labels]
        if not documents:
            return 0
        try:
            return len(self._labels.insert_many(documents, ordered=False).inserted_ids)
        except BulkWriteError as error:
            others = [e for e in error.details.get("writeErrors", []) if e.get("code") != DUPLICATE_KEY]
            if others:
                raise
            return int(error.details.get("nInserted", 0))

    def get_label(self, frame_id: str) -> Label | None:
        document = self._labels.find_one({"_id": frame_id.lower()})
        return _label(document) if document is not None else None

    def query_labels(self, filters: LabelQuery | None = None) -> list[Label]:
        filters = filters or LabelQuery()
        order = (
            [("priority", DESCENDING), ("captured_at", ASCENDING), ("_id", ASCENDING)]
            if filters.order == "priority"
            else [("captured_at", DESCENDING), ("_id", DESCENDING)]
        )
        found = self._labels.find(_filter(filters), {"history": 0}).sort(order).skip(filters.offset)
        return [_label(document) for document in found.limit(filters.limit)]

    def count_labels(self, filters: LabelQuery | None = None) -> int:
        return int(self._labels.count_documents(_filter(filters or LabelQuery())))

    def review(self, frame_id: str, review: Review, expected_revision: int | None = None) -> Label:
        document = self._labels.find_one({"_id": frame_id.lower()}, {"history": 0})
        if document is None:
            raise LabelNotFound(frame_id)
        label = _label(document)
        if expected_revision is not None and label.revision != expected_revision:
            raise LabelConflict.moved_on(frame_id, label.revision, expected_revision)
        new, event = reviewed(label, review)
        changed = {key: value for key, value in _document(new, []).items() if key in REVIEWED_FIELDS}
        updated = self._labels.find_one_and_update(
            {"_id": label.frame_id, "revision": label.revision},  # nobody changed it since it was read
            {"$set": changed, "$push": {"history": event.model_dump_json()}},
            projection={"history": 0},
            return_document=ReturnDocument.AFTER,
        )
        if updated is None:
            current = self.get_label(frame_id)
            raise LabelConflict.moved_on(frame_id, current.revision if current else -1, label.revision)
        return _label(updated)

    def history(self, frame_id: str) -> list[LabelEvent]:
        document = self._labels.find_one({"_id": frame_id.lower()}, {"history": 1})
        events = document.get("history", []) if document is not None else []
        return [LabelEvent.model_validate_json(event) for event in events]


def _document(label: Label, history: list[LabelEvent]) -> dict[str, Any]:
    return {
        "_id": label.frame_id,
        "captured_at": label.captured_at,
        "queued_at": label.queued_at,
        "line_id": label.line_id,
        "camera_id": label.camera_id,
        "recipe": label.recipe,
        "verdict": label.verdict,
        "status": label.status,
        "decision": label.ground_truth,
        "reviewer": label.review.reviewer if label.review is not None else None,
        "model_version": label.model_version,
        "priority": label.priority,
        "revision": label.revision,
        "record": label.model_dump_json(),
        "history": [event.model_dump_json() for event in history],
    }


def _label(document: dict[str, Any]) -> Label:
    return Label.model_validate_json(document["record"])


def _filter(filters: LabelQuery) -> dict[str, Any]:
    query: dict[str, Any] = {}
    for field in ("status", "line_id", "camera_id", "recipe", "verdict", "decision", "model_version"):
        value = getattr(filters, field)
        if value is not None:
            query[field] = value
    for field, start, end in (
        ("captured_at", filters.captured_from, filters.captured_to),
        ("queued_at", filters.queued_from, filters.queued_to),
    ):
        bounds = {key: value for key, value in (("$gte", start), ("$lt", end)) if value is not None}
        if bounds:
            query[field] = bounds
    return query


def _redacted(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return url.replace(f":{parts.password}@", ":***@", 1)
