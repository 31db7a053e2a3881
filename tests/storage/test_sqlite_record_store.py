import sqlite3
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from schemas.alert import ALERT_EXAMPLE, Alert
from schemas.dead_letter import DEAD_LETTER_EXAMPLE, DeadLetter
from schemas.ids import new_uuid7
from schemas.inspection import Inspection
from services.storage import sqlite_sql as sql
from services.storage.errors import RecordStoreVersionError
from services.storage.ports import RecordStore
from services.storage.query import InspectionQuery, NgRateBucket
from services.storage.sqlite_record_store import SqliteRecordStore
from tests.storage.factories import T0, make_inspection


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "records.db"


@pytest.fixture
def store(db_path: Path) -> Iterator[SqliteRecordStore]:
    with SqliteRecordStore(db_path) as opened:
        yield opened


def _s(seconds: float) -> timedelta:
    return timedelta(seconds=seconds)


def _count_rows(db_path: Path, table: str) -> int:
    with sqlite3.connect(db_path) as db:
        return int(db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])


def test_database_uses_wal_and_records_its_schema_version(store: SqliteRecordStore, db_path: Path) -> None:
    port: RecordStore = store
    assert port.count_inspections() == 0
    with sqlite3.connect(db_path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA user_version").fetchone()[0] == sql.SCHEMA_VERSION


def test_upsert_twice_keeps_one_record_and_one_set_of_child_rows(
    store: SqliteRecordStore, db_path: Path
) -> None:
    inspection = make_inspection(verdict="NG", locations=("center", "center", "top_left"), params={"t": 1.0})
    store.upsert_inspection(inspection)
    store.upsert_inspection(inspection)
    assert store.count_inspections() == 1
    assert store.get_inspection(inspection.frame_id) == inspection
    assert _count_rows(db_path, "inspections") == 1
    assert _count_rows(db_path, "defects") == 3
    assert _count_rows(db_path, "process_params") == 1


def test_upsert_replaces_the_record_and_its_child_rows(store: SqliteRecordStore) -> None:
    first = make_inspection(verdict="NG", locations=("center",), params={"t": 1.0})
    second = make_inspection(frame_id=first.frame_id, verdict="OK", params={"p": 2.0})
    store.upsert_inspection(first)
    store.upsert_inspection(second)
    assert store.get_inspection(first.frame_id) == second
    assert store.query_inspections(InspectionQuery(defect_location="center")) == []
    assert store.query_inspections(InspectionQuery(params={"t": (None, None)})) == []
    assert store.query_inspections(InspectionQuery(params={"p": (2.0, 2.0)})) == [second]


def test_a_failed_upsert_leaves_no_half_written_record(store: SqliteRecordStore, db_path: Path) -> None:
    with sqlite3.connect(db_path) as db:
        db.execute(
            "CREATE TRIGGER refuse_boom BEFORE INSERT ON process_params WHEN NEW.name = 'boom' "
            "BEGIN SELECT RAISE(ABORT, 'boom refused'); END"
        )
    inspection = make_inspection(locations=("center",), params={"boom": 1.0})
    with pytest.raises(sqlite3.IntegrityError, match="boom refused"):
        store.upsert_inspection(inspection)
    assert store.get_inspection(inspection.frame_id) is None
    assert _count_rows(db_path, "defects") == 0
    store.upsert_inspection(make_inspection())
    assert store.count_inspections() == 1


def test_records_upserted_together_are_stored_all_or_none(store: SqliteRecordStore, db_path: Path) -> None:
    group = [
        make_inspection(verdict="NG", locations=("center",), params={"t": 1.0}),
        make_inspection(params={"t": 2.0}),
        make_inspection(locations=("top_left",)),
    ]
    store.upsert_inspections(group)
    store.upsert_inspections(group)  # idempotent, like one at a time
    assert store.count_inspections() == 3 and _count_rows(db_path, "defects") == 2
    assert store.query_inspections(InspectionQuery(params={"t": (1.5, None)})) == [group[1]]
    with sqlite3.connect(db_path) as db:
        db.execute(
            "CREATE TRIGGER refuse_boom BEFORE INSERT ON process_params WHEN NEW.name = 'boom' "
            "BEGIN SELECT RAISE(ABORT, 'boom refused'); END"
        )
    bad_group = [make_inspection(locations=("center",)), make_inspection(params={"boom": 1.0})]
    with pytest.raises(sqlite3.IntegrityError, match="boom refused"):
        store.upsert_inspections(bad_group)
    assert [store.get_inspection(i.frame_id) for i in bad_group] == [None, None]  # not even the first
    assert store.count_inspections() == 3 and _count_rows(db_path, "defects") == 2


def test_unknown_frame_id_reads_as_none(store: SqliteRecordStore) -> None:
    assert store.get_inspection(new_uuid7()) is None


@pytest.fixture
def line(store: SqliteRecordStore) -> dict[str, Inspection]:
    """Six inspections on two lines; captured 0, 30, 70, 130, 200 and 250 s after T0."""
    records = {
        "A": make_inspection(at_s=0, camera_id="cam-1", params={"temp": 200.0}),
        "B": make_inspection(at_s=30, camera_id="cam-1", verdict="NG", locations=("top_left",),
                             params={"temp": 210.0}),
        "C": make_inspection(at_s=70, camera_id="cam-2", recipe="r2", verdict="NG",
                             locations=("center", "top_left"), params={"temp": 220.0, "pressure": 5.0}),
        "D": make_inspection(at_s=130, line_id="press-line-2", camera_id="cam-3"),
        "E": make_inspection(at_s=200, line_id="press-line-2", camera_id="cam-3", recipe="r2", verdict="NG",
                             locations=("bottom_right",), params={"temp": 230.0}),
        "F": make_inspection(at_s=250, camera_id="cam-2", params={"temp": 199.5}),
    }  # fmt: skip
    for inspection in records.values():
        store.upsert_inspection(inspection)
    return records


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        (InspectionQuery(), "FEDCBA"),
        (InspectionQuery(captured_from=T0 + _s(30), captured_to=T0 + _s(130)), "CB"),
        (InspectionQuery(captured_from=T0 + _s(200)), "FE"),
        (InspectionQuery(captured_to=T0 + _s(30)), "A"),
        (InspectionQuery(line_id="press-line-2"), "ED"),
        (InspectionQuery(camera_id="cam-2"), "FC"),
        (InspectionQuery(recipe="r2"), "EC"),
        (InspectionQuery(verdict="NG"), "ECB"),
        (InspectionQuery(verdict="OK"), "FDA"),
        (InspectionQuery(defect_location="top_left"), "CB"),
        (InspectionQuery(defect_location="center"), "C"),
        (InspectionQuery(defect_location="bottom_left"), ""),
        (InspectionQuery(params={"temp": (205.0, 225.0)}), "CB"),
        (InspectionQuery(params={"temp": (None, 200.0)}), "FA"),
        (InspectionQuery(params={"temp": (200.0, 200.0)}), "A"),
        (InspectionQuery(params={"temp": (225.0, None)}), "E"),
        (InspectionQuery(params={"pressure": (4.0, 6.0)}), "C"),
        (InspectionQuery(params={"temp": (0.0, 1e9), "pressure": (0.0, 4.0)}), ""),
        (InspectionQuery(line_id="press-line-1", verdict="NG", params={"temp": (215.0, None)}), "C"),
        (InspectionQuery(limit=2), "FE"),
        (InspectionQuery(limit=2, offset=3), "CB"),
    ],
)
def test_filters_return_exactly_the_matching_records(
    store: SqliteRecordStore, line: dict[str, Inspection], filters: InspectionQuery, expected: str
) -> None:
    assert store.query_inspections(filters) == [line[key] for key in expected]
    if filters.limit == InspectionQuery().limit:
        assert store.count_inspections(filters) == len(expected)


def test_ng_rate_counts_per_bucket_line_and_camera(
    store: SqliteRecordStore, line: dict[str, Inspection]
) -> None:
    minute = timedelta(seconds=60)
    assert store.ng_rate(60) == [
        NgRateBucket(T0, "press-line-1", "cam-1", 2, 1),
        NgRateBucket(T0 + minute, "press-line-1", "cam-2", 1, 1),
        NgRateBucket(T0 + 2 * minute, "press-line-2", "cam-3", 1, 0),
        NgRateBucket(T0 + 3 * minute, "press-line-2", "cam-3", 1, 1),
        NgRateBucket(T0 + 4 * minute, "press-line-1", "cam-2", 1, 0),
    ]
    assert store.ng_rate(3600, InspectionQuery(line_id="press-line-1")) == [
        NgRateBucket(T0, "press-line-1", "cam-1", 2, 1),
        NgRateBucket(T0, "press-line-1", "cam-2", 2, 1),
    ]
    with pytest.raises(ValueError, match="bucket_s"):
        store.ng_rate(0)


def test_data_survives_reopening_the_file(db_path: Path) -> None:
    inspection = make_inspection(verdict="NG", locations=("center",), params={"temp": 1.0})
    with SqliteRecordStore(db_path) as store:
        store.upsert_inspection(inspection)
        store.add_alert(Alert.model_validate(ALERT_EXAMPLE))
    with SqliteRecordStore(db_path) as store:
        assert store.get_inspection(inspection.frame_id) == inspection
        assert store.query_inspections(InspectionQuery(defect_location="center")) == [inspection]
        assert len(store.list_alerts()) == 1


def test_a_database_from_a_newer_version_is_refused(db_path: Path) -> None:
    SqliteRecordStore(db_path).close()
    with sqlite3.connect(db_path) as db:
        db.execute("PRAGMA user_version = 99")
    with pytest.raises(RecordStoreVersionError, match=r"schema version 99, made by a newer linewatch"):
        SqliteRecordStore(db_path)


def test_concurrent_upserts_lose_nothing(store: SqliteRecordStore) -> None:
    batches = [[make_inspection(at_s=i, params={"temp": float(i)}) for i in range(100)] for _ in range(4)]
    errors: list[BaseException] = []

    def write(batch: list[Inspection]) -> None:
        try:
            for inspection in batch:
                store.upsert_inspection(inspection)
                store.upsert_inspection(inspection)  # an at-least-once replay
                store.count_inspections()
        except BaseException as error:  # reported by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=write, args=(batch,)) for batch in batches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert store.count_inspections() == 400
    expected = {inspection.frame_id for batch in batches for inspection in batch}
    stored = {inspection.frame_id for inspection in store.query_inspections(InspectionQuery(limit=1000))}
    assert stored == expected


def test_dead_letters_are_listed_newest_first(store: SqliteRecordStore) -> None:
    old = DeadLetter.model_validate(DEAD_LETTER_EXAMPLE)
    new = old.model_copy(update={"failed_at": old.failed_at + timedelta(seconds=1), "source": "inspect"})
    store.add_dead_letter(old)
    store.add_dead_letter(new)
    assert store.list_dead_letters() == [new, old]
    assert store.list_dead_letters(limit=1) == [new]


def test_alerts_are_idempotent_and_listed_newest_first(store: SqliteRecordStore) -> None:
    first = Alert.model_validate(ALERT_EXAMPLE)
    later = first.raised_at + timedelta(minutes=5)
    second = first.model_copy(update={"alert_id": new_uuid7(), "raised_at": later})
    store.add_alert(first)
    store.add_alert(first)
    store.add_alert(second)
    assert store.list_alerts() == [second, first]
    with pytest.raises(ValueError, match="limit"):
        store.list_alerts(limit=-1)


def test_a_frames_dead_letter_is_stored_once_per_step_and_reason(store: SqliteRecordStore) -> None:
    """A replay after a restart meets the same bad frame again: it is not counted twice."""
    first = DeadLetter.model_validate(DEAD_LETTER_EXAMPLE | {"reason": "undecodable: PNG truncated"})
    again = first.model_copy(
        update={"failed_at": first.failed_at + _s(60), "reason": "undecodable: other words"}
    )
    other_step = first.model_copy(update={"source": "inspect"})
    no_frame = first.model_copy(update={"frame_id": None, "source": "process"})
    assert store.add_dead_letter(first) is True
    assert store.add_dead_letter(again) is False  # same frame, step and reason code
    assert store.add_dead_letter(other_step) is True
    assert store.add_dead_letter(no_frame) is True and store.add_dead_letter(no_frame) is True
    assert store.list_dead_letters() == [no_frame, no_frame, other_step, first]


def test_a_version_1_database_is_upgraded_and_keeps_its_dead_letters(db_path: Path) -> None:
    letter = DeadLetter.model_validate(DEAD_LETTER_EXAMPLE)
    with sqlite3.connect(db_path) as db:  # the layout version 1 wrote
        for statement in sql.CREATE_TABLES:
            db.execute(statement)
        db.execute(
            "INSERT INTO dead_letters (failed_at_us, source, frame_id, record) VALUES (?, ?, ?, ?)",
            (sql.to_us(letter.failed_at), letter.source, letter.frame_id, letter.model_dump_json()),
        )
        db.execute("PRAGMA user_version = 1")
    with SqliteRecordStore(db_path) as store:
        assert store.list_dead_letters() == [letter]
        assert store.add_dead_letter(letter) is True  # the old row has no key: kept, and this one too
        assert store.add_dead_letter(letter) is False
    with sqlite3.connect(db_path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == sql.SCHEMA_VERSION
