"""LabelStore adapter on one SQLite file (WAL), safe to share between threads."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

from schemas.label import Label, LabelEvent, Review
from services.storage.errors import LabelConflict, LabelNotFound
from services.storage.label_changes import first_event, reviewed
from services.storage.label_query import LabelQuery
from services.storage.sqlite_sql import to_us

CREATE_TABLES = (
    """CREATE TABLE IF NOT EXISTS labels (
        frame_id TEXT PRIMARY KEY,
        captured_at_us INTEGER NOT NULL,
        queued_at_us INTEGER,
        line_id TEXT NOT NULL,
        camera_id TEXT NOT NULL,
        recipe TEXT NOT NULL,
        verdict TEXT NOT NULL,
        status TEXT NOT NULL,
        decision TEXT,
        model_version TEXT NOT NULL,
        priority REAL NOT NULL,
        revision INTEGER NOT NULL,
        record TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS ix_labels_queue ON labels (status, priority DESC, captured_at_us)",
    "CREATE INDEX IF NOT EXISTS ix_labels_captured_at ON labels (captured_at_us)",
    "CREATE INDEX IF NOT EXISTS ix_labels_queued_at ON labels (queued_at_us)",
    """CREATE TABLE IF NOT EXISTS label_events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        frame_id TEXT NOT NULL REFERENCES labels (frame_id) ON DELETE CASCADE,
        record TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS ix_label_events_frame ON label_events (frame_id, id)",
)
COLUMNS = (
    "frame_id, captured_at_us, queued_at_us, line_id, camera_id, recipe, verdict, status, decision, "
    "model_version, priority, revision, record"
)


class SqliteLabelStore:
    """Labels and their history in one SQLite database (``sqlite:///runs/labels.db``; it may be the
    record store's file: the tables do not collide). One connection behind a lock; each write is
    one transaction, so a label never changes without its history entry."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            for pragma in (
                "journal_mode = WAL",
                "synchronous = NORMAL",
                "foreign_keys = ON",
                "busy_timeout = 5000",
            ):
                self._db.execute(f"PRAGMA {pragma}")
            with self._transaction() as db:
                for statement in CREATE_TABLES:
                    db.execute(statement)
        except BaseException:
            self._db.close()
            raise

    def __enter__(self) -> SqliteLabelStore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def add_labels(self, labels: Sequence[Label], actor: str = "linewatch") -> int:
        rows = [(_row(label), first_event(label, actor).model_dump_json()) for label in labels]
        added = 0
        with self._transaction() as db:
            for row, event in rows:
                cursor = db.execute(
                    f"INSERT INTO labels ({COLUMNS}) VALUES ({', '.join('?' * 13)}) ON CONFLICT DO NOTHING",
                    row,
                )
                if cursor.rowcount:
                    db.execute("INSERT INTO label_events (frame_id, record) VALUES (?, ?)", (row[0], event))
                    added += 1
        return added

    def get_label(self, frame_id: str) -> Label | None:
        rows = self._read("SELECT record FROM labels WHERE frame_id = ?", [frame_id.lower()])
        return Label.model_validate_json(rows[0][0]) if rows else None

    def query_labels(self, filters: LabelQuery | None = None) -> list[Label]:
        filters = filters or LabelQuery()
        where, args = _where(filters)
        order = (
            "priority DESC, captured_at_us, frame_id"
            if filters.order == "priority"
            else "captured_at_us DESC, frame_id DESC"
        )
        rows = self._read(
            f"SELECT record FROM labels {where} ORDER BY {order} LIMIT ? OFFSET ?",
            [*args, filters.limit, filters.offset],
        )
        return [Label.model_validate_json(record) for (record,) in rows]

    def count_labels(self, filters: LabelQuery | None = None) -> int:
        where, args = _where(filters or LabelQuery())
        return int(self._read(f"SELECT COUNT(*) FROM labels {where}", args)[0][0])

    def review(self, frame_id: str, review: Review, expected_revision: int | None = None) -> Label:
        with self._transaction() as db:
            found = db.execute("SELECT record FROM labels WHERE frame_id = ?", (frame_id.lower(),)).fetchone()
            if found is None:
                raise LabelNotFound(frame_id)
            label = Label.model_validate_json(found[0])
            if expected_revision is not None and label.revision != expected_revision:
                raise LabelConflict.moved_on(frame_id, label.revision, expected_revision)
            new, event = reviewed(label, review)
            row = _row(new)
            db.execute(
                "UPDATE labels SET status = ?, decision = ?, revision = ?, record = ? WHERE frame_id = ?",
                (new.status, new.ground_truth, new.revision, row[-1], new.frame_id),
            )
            db.execute(
                "INSERT INTO label_events (frame_id, record) VALUES (?, ?)",
                (new.frame_id, event.model_dump_json()),
            )
        return new

    def history(self, frame_id: str) -> list[LabelEvent]:
        rows = self._read(
            "SELECT record FROM label_events WHERE frame_id = ? ORDER BY id", [frame_id.lower()]
        )
        return [LabelEvent.model_validate_json(record) for (record,) in rows]

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _read(self, statement: str, args: Sequence[object]) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(statement, list(args)).fetchall()


def _row(label: Label) -> tuple[object, ...]:
    return (
        label.frame_id,
        to_us(label.captured_at),
        to_us(label.queued_at) if label.queued_at is not None else None,
        label.line_id,
        label.camera_id,
        label.recipe,
        label.verdict,
        label.status,
        label.ground_truth,
        label.model_version,
        label.priority,
        label.revision,
        label.model_dump_json(),
    )


def _where(filters: LabelQuery) -> tuple[str, list[object]]:
    conditions: list[str] = []
    args: list[object] = []
    for column, value in (
        ("status", filters.status),
        ("line_id", filters.line_id),
        ("camera_id", filters.camera_id),
        ("recipe", filters.recipe),
        ("verdict", filters.verdict),
        ("decision", filters.decision),
        ("model_version", filters.model_version),
    ):
        if value is not None:
            conditions.append(f"{column} = ?")
            args.append(value)
    for column, start, end in (
        ("captured_at_us", filters.captured_from, filters.captured_to),
        ("queued_at_us", filters.queued_from, filters.queued_to),
    ):
        if start is not None:
            conditions.append(f"{column} >= ?")
            args.append(to_us(start))
        if end is not None:
            conditions.append(f"{column} < ?")
            args.append(to_us(end))
    return ("WHERE " + " AND ".join(conditions) if conditions else ""), args
