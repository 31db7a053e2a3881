"""RecordStore adapter on one SQLite file (WAL), safe to share between threads."""

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

from schemas.alert import Alert
from schemas.dead_letter import DeadLetter, reason_code
from schemas.inspection import Inspection
from services.storage import sqlite_analytics as analytics
from services.storage import sqlite_sql as sql
from services.storage.analytics_query import AnalyticsQuery, ResultRow
from services.storage.errors import RecordStoreVersionError
from services.storage.ports import ParamStats
from services.storage.query import InspectionQuery, NgRateBucket


class SqliteRecordStore:
    """Inspections, dead letters and alerts in one SQLite database.

    One connection, guarded by a lock; every write is one transaction, so a record and its child
    rows are stored together or not at all. ``upsert_inspection`` is keyed by ``frame_id``.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = NORMAL")
            self._db.execute("PRAGMA foreign_keys = ON")
            self._db.execute("PRAGMA busy_timeout = 5000")
            self._create_or_check_schema()
        except BaseException:
            self._db.close()
            raise

    def __enter__(self) -> "SqliteRecordStore":
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def upsert_inspection(self, inspection: Inspection) -> None:
        self.upsert_inspections([inspection])

    def upsert_inspections(self, inspections: Sequence[Inspection]) -> None:
        """Store several records in one transaction: all of them or, on an error, none. (The line
        stores each group of records this way: one commit instead of one per record.)"""
        rows = [_rows(inspection) for inspection in inspections]  # (serialised before taking the lock)
        with self._transaction() as db:
            for row, defects, params in rows:
                frame_id = row[0]
                db.execute(sql.UPSERT_INSPECTION, row)
                db.execute("DELETE FROM defects WHERE frame_id = ?", (frame_id,))
                db.executemany(sql.INSERT_DEFECT, defects)
                db.execute("DELETE FROM process_params WHERE frame_id = ?", (frame_id,))
                db.executemany("INSERT INTO process_params (frame_id, name, value) VALUES (?, ?, ?)", params)

    def get_inspection(self, frame_id: str) -> Inspection | None:
        rows = self._read("SELECT record FROM inspections WHERE frame_id = ?", [frame_id.lower()])
        return Inspection.model_validate_json(rows[0][0]) if rows else None

    def query_inspections(self, filters: InspectionQuery | None = None) -> list[Inspection]:
        filters = filters or InspectionQuery()
        where, args = sql.where_clause(filters)
        rows = self._read(
            f"SELECT i.record FROM inspections i {where} "
            "ORDER BY i.captured_at_us DESC, i.frame_id DESC LIMIT ? OFFSET ?",
            [*args, filters.limit, filters.offset],
        )
        return [Inspection.model_validate_json(record) for (record,) in rows]

    def count_inspections(self, filters: InspectionQuery | None = None) -> int:
        where, args = sql.where_clause(filters or InspectionQuery())
        rows = self._read(f"SELECT COUNT(*) FROM inspections i {where}", args)
        return int(rows[0][0])

    def ng_rate(self, bucket_s: int, filters: InspectionQuery | None = None) -> list[NgRateBucket]:
        """Inspections and NG verdicts per (time bucket, line, camera), oldest bucket first.

        Buckets are ``bucket_s`` seconds long and aligned to the unix epoch (UTC).
        """
        if bucket_s <= 0:
            raise ValueError(f"bucket_s must be a positive number of seconds, got {bucket_s}")
        bucket_us = bucket_s * 1_000_000
        where, args = sql.where_clause(filters or InspectionQuery())
        rows = self._read(
            "SELECT (i.captured_at_us / ?) * ? AS bucket_us, i.line_id, i.camera_id, COUNT(*), "
            f"SUM(i.verdict = 'NG') FROM inspections i {where} "
            "GROUP BY bucket_us, i.line_id, i.camera_id ORDER BY bucket_us, i.line_id, i.camera_id",
            [bucket_us, bucket_us, *args],
        )
        return [NgRateBucket(sql.from_us(b), line, camera, total, ng) for b, line, camera, total, ng in rows]

    def aggregate(self, query: AnalyticsQuery) -> list[ResultRow]:
        """An analytics query, run as one SQL statement (see ``services.analytics.query``)."""
        return analytics.aggregate(self._read, query)

    def parameter_stats(self, filters: InspectionQuery | None = None) -> dict[str, ParamStats]:
        return analytics.parameter_stats(self._read, filters)

    def add_dead_letter(self, dead_letter: DeadLetter) -> bool:
        """Store a dead letter; False when this frame's letter from this step for this reason code is
        already stored (a replay meeting the same bad frame again). Letters without a frame id are
        always added."""
        letter = dead_letter
        once_key = f"{letter.frame_id}|{letter.source}|{reason_code(letter)}" if letter.frame_id else None
        with self._transaction() as db:
            cursor = db.execute(
                "INSERT OR IGNORE INTO dead_letters (failed_at_us, source, frame_id, record, once_key) "
                "VALUES (?, ?, ?, ?, ?)",
                (
                    sql.to_us(letter.failed_at),
                    letter.source,
                    letter.frame_id,
                    letter.model_dump_json(),
                    once_key,
                ),
            )
            return cursor.rowcount == 1

    def list_dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """The newest dead letters first."""
        rows = self._read(
            "SELECT record FROM dead_letters ORDER BY failed_at_us DESC, id DESC LIMIT ?", [_check(limit)]
        )
        return [DeadLetter.model_validate_json(record) for (record,) in rows]

    def count_dead_letters(self) -> int:
        """How many dead letters are stored (from every runtime that writes here)."""
        ((count,),) = self._read("SELECT COUNT(*) FROM dead_letters", [])
        return int(count)

    def add_alert(self, alert: Alert) -> None:
        """Store an alert; adding the same ``alert_id`` again replaces it."""
        row = (alert.alert_id, sql.to_us(alert.raised_at), alert.line_id, alert.kind, alert.model_dump_json())
        with self._transaction() as db:
            db.execute(sql.UPSERT_ALERT, row)

    def list_alerts(self, limit: int = 100) -> list[Alert]:
        """The newest alerts first."""
        rows = self._read(
            "SELECT record FROM alerts ORDER BY raised_at_us DESC, alert_id DESC LIMIT ?", [_check(limit)]
        )
        return [Alert.model_validate_json(record) for (record,) in rows]

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

    def _read(self, query: str, args: list[object]) -> list[Any]:
        with self._lock:
            return self._db.execute(query, args).fetchall()

    def _create_or_check_schema(self) -> None:
        with self._transaction() as db:
            (version,) = db.execute("PRAGMA user_version").fetchone()
            if version > sql.SCHEMA_VERSION:
                raise RecordStoreVersionError(
                    f"record store {self.path} has schema version {version}, made by a newer linewatch; "
                    f"this one supports up to version {sql.SCHEMA_VERSION}: upgrade linewatch to open it"
                )
            if version == 0:
                for statement in sql.CREATE_TABLES:  # the layout of version 1
                    db.execute(statement)
                version = 1
            for step in range(version + 1, sql.SCHEMA_VERSION + 1):
                for statement in sql.MIGRATIONS[step]:
                    db.execute(statement)
            db.execute(f"PRAGMA user_version = {sql.SCHEMA_VERSION}")


def _check(limit: int) -> int:
    if limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    return limit


_Rows = tuple[tuple[Any, ...], list[tuple[Any, ...]], list[tuple[str, str, float]]]


def _rows(inspection: Inspection) -> _Rows:
    """An inspection's row, its defects' rows and its process parameters' rows."""
    frame_id = inspection.frame_id
    row = (
        frame_id,
        sql.to_us(inspection.captured_at),
        inspection.line_id,
        inspection.camera_id,
        inspection.recipe,
        inspection.verdict,
        inspection.model_dump_json(),
        inspection.score,
        sum(defect.area_px for defect in inspection.defects),
        inspection.process.status,
    )
    defects = [
        (frame_id, idx, d.location, d.severity, d.cluster_id, d.area_px)
        for idx, d in enumerate(inspection.defects)
    ]
    params = [(frame_id, name, value) for name, value in sorted(inspection.process.params.items())]
    return row, defects, params
