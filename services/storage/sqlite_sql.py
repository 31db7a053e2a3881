"""The SQLite layout of the record store and the SQL for its filters.

Each record is kept whole as JSON, beside the columns it is filtered by. Two child tables make
defect locations and process parameters filterable; ``PRAGMA user_version`` holds the layout version.
"""

from datetime import UTC, datetime, timedelta

from services.storage.query import InspectionQuery

SCHEMA_VERSION = 3

CREATE_TABLES = (
    """CREATE TABLE IF NOT EXISTS inspections (
        frame_id TEXT PRIMARY KEY,
        captured_at_us INTEGER NOT NULL,
        line_id TEXT NOT NULL,
        camera_id TEXT NOT NULL,
        recipe TEXT NOT NULL,
        verdict TEXT NOT NULL,
        record TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS ix_inspections_captured_at ON inspections (captured_at_us)",
    "CREATE INDEX IF NOT EXISTS ix_inspections_line ON inspections (line_id, captured_at_us)",
    "CREATE INDEX IF NOT EXISTS ix_inspections_camera ON inspections (camera_id, captured_at_us)",
    "CREATE INDEX IF NOT EXISTS ix_inspections_recipe ON inspections (recipe, captured_at_us)",
    "CREATE INDEX IF NOT EXISTS ix_inspections_verdict ON inspections (verdict, captured_at_us)",
    """CREATE TABLE IF NOT EXISTS defect_locations (
        frame_id TEXT NOT NULL REFERENCES inspections (frame_id) ON DELETE CASCADE,
        location TEXT NOT NULL,
        PRIMARY KEY (frame_id, location)
    )""",
    "CREATE INDEX IF NOT EXISTS ix_defect_locations_location ON defect_locations (location, frame_id)",
    """CREATE TABLE IF NOT EXISTS process_params (
        frame_id TEXT NOT NULL REFERENCES inspections (frame_id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        value REAL NOT NULL,
        PRIMARY KEY (frame_id, name)
    )""",
    "CREATE INDEX IF NOT EXISTS ix_process_params_name_value ON process_params (name, value)",
    """CREATE TABLE IF NOT EXISTS dead_letters (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        failed_at_us INTEGER NOT NULL,
        source TEXT NOT NULL,
        frame_id TEXT,
        record TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS ix_dead_letters_failed_at ON dead_letters (failed_at_us)",
    """CREATE TABLE IF NOT EXISTS alerts (
        alert_id TEXT PRIMARY KEY,
        raised_at_us INTEGER NOT NULL,
        line_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        record TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS ix_alerts_raised_at ON alerts (raised_at_us)",
)

MIGRATIONS: dict[int, tuple[str, ...]] = {
    # 2: a dead letter of a frame is stored once per (frame, step, reason code): a replay after a
    # restart meets the same bad frame again and must not count it twice. Letters without a frame id
    # (e.g. a malformed process row) have no key and are all kept.
    2: (
        "ALTER TABLE dead_letters ADD COLUMN once_key TEXT",
        "CREATE UNIQUE INDEX IF NOT EXISTS ux_dead_letters_once ON dead_letters (once_key)",
    ),
    # 3: plant analytics. The score, the total defect area and the process status become columns,
    # and every defect gets a row (location, severity, cluster, area) so that queries can filter and
    # group by them; the rows are filled from the stored records, and replace defect_locations.
    3: (
        "ALTER TABLE inspections ADD COLUMN score REAL NOT NULL DEFAULT 0",
        "ALTER TABLE inspections ADD COLUMN defect_area_px INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE inspections ADD COLUMN process_status TEXT NOT NULL DEFAULT 'missing'",
        """UPDATE inspections SET
            score = json_extract(record, '$.score'),
            process_status = json_extract(record, '$.process.status'),
            defect_area_px = (SELECT COALESCE(SUM(json_extract(d.value, '$.area_px')), 0)
                              FROM json_each(record, '$.defects') d)""",
        """CREATE TABLE IF NOT EXISTS defects (
            frame_id TEXT NOT NULL REFERENCES inspections (frame_id) ON DELETE CASCADE,
            idx INTEGER NOT NULL,
            location TEXT NOT NULL,
            severity TEXT NOT NULL,
            cluster_id INTEGER,
            area_px INTEGER NOT NULL,
            PRIMARY KEY (frame_id, idx)
        )""",
        """INSERT INTO defects (frame_id, idx, location, severity, cluster_id, area_px)
            SELECT i.frame_id, d.key, json_extract(d.value, '$.location'),
                   json_extract(d.value, '$.severity'), json_extract(d.value, '$.cluster_id'),
                   json_extract(d.value, '$.area_px')
            FROM inspections i, json_each(i.record, '$.defects') d""",
        "CREATE INDEX IF NOT EXISTS ix_defects_location ON defects (location, frame_id)",
        "CREATE INDEX IF NOT EXISTS ix_defects_severity ON defects (severity, frame_id)",
        "CREATE INDEX IF NOT EXISTS ix_defects_cluster ON defects (cluster_id, frame_id)",
        "DROP TABLE defect_locations",
    ),
}
"""Statements that bring a layout from the version before the key up to the key's version."""

UPSERT_INSPECTION = """
    INSERT INTO inspections (frame_id, captured_at_us, line_id, camera_id, recipe, verdict, record,
                             score, defect_area_px, process_status)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (frame_id) DO UPDATE SET
        captured_at_us = excluded.captured_at_us, line_id = excluded.line_id,
        camera_id = excluded.camera_id, recipe = excluded.recipe, verdict = excluded.verdict,
        record = excluded.record, score = excluded.score, defect_area_px = excluded.defect_area_px,
        process_status = excluded.process_status
"""

INSERT_DEFECT = (
    "INSERT INTO defects (frame_id, idx, location, severity, cluster_id, area_px) VALUES (?, ?, ?, ?, ?, ?)"
)

UPSERT_ALERT = """
    INSERT INTO alerts (alert_id, raised_at_us, line_id, kind, record) VALUES (?, ?, ?, ?, ?)
    ON CONFLICT (alert_id) DO UPDATE SET
        raised_at_us = excluded.raised_at_us, line_id = excluded.line_id, kind = excluded.kind,
        record = excluded.record
"""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def to_us(moment: datetime) -> int:
    """Microseconds since the unix epoch of an aware datetime."""
    return (moment - _EPOCH) // _MICROSECOND


def from_us(micros: int) -> datetime:
    return _EPOCH + micros * _MICROSECOND


def where_clause(filters: InspectionQuery) -> tuple[str, list[object]]:
    """``WHERE ...`` over ``inspections i`` for the filters, with its arguments ('' when none)."""
    conditions: list[str] = []
    args: list[object] = []
    if filters.captured_from is not None:
        conditions.append("i.captured_at_us >= ?")
        args.append(to_us(filters.captured_from))
    if filters.captured_to is not None:
        conditions.append("i.captured_at_us < ?")
        args.append(to_us(filters.captured_to))
    for column in ("line_id", "camera_id", "recipe", "verdict"):
        value = getattr(filters, column)
        if value is not None:
            conditions.append(f"i.{column} = ?")
            args.append(value)
    for column in ("defect_location", "severity", "cluster_id"):
        value = getattr(filters, column)
        if value is not None:
            field = column.removeprefix("defect_")
            conditions.append(
                f"EXISTS (SELECT 1 FROM defects d WHERE d.frame_id = i.frame_id AND d.{field} = ?)"
            )
            args.append(value)
    for name, (low, high) in sorted(filters.params.items()):
        parts = ["p.frame_id = i.frame_id", "p.name = ?"]
        args.append(name)
        if low is not None:
            parts.append("p.value >= ?")
            args.append(low)
        if high is not None:
            parts.append("p.value <= ?")
            args.append(high)
        conditions.append(f"EXISTS (SELECT 1 FROM process_params p WHERE {' AND '.join(parts)})")
    return ("WHERE " + " AND ".join(conditions) if conditions else ""), args
