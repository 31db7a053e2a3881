"""What every record store promises (SQLite and Elasticsearch), on real servers.

The Elasticsearch runs use osmem-server (OpenSearch 3 REST API) started by the fixture, or the
server named by LINEWATCH_TEST_ES_URL.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from schemas.alert import ALERT_EXAMPLE, Alert
from schemas.dead_letter import DEAD_LETTER_EXAMPLE, DeadLetter
from schemas.ids import new_uuid7
from schemas.inspection import Inspection
from services.storage.ports import RecordStore
from services.storage.query import InspectionQuery, NgRateBucket
from services.storage.stores import open_record_store
from tests.storage.factories import T0, make_inspection


@pytest.fixture(params=["sqlite", "elasticsearch"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RecordStore]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'records.db'}"
    else:
        url = request.getfixturevalue("es_url")
    opened = open_record_store(url)
    yield opened
    opened.close()


def _s(seconds: float) -> timedelta:
    return timedelta(seconds=seconds)


def test_upsert_is_idempotent_and_replaces(store: RecordStore) -> None:
    first = make_inspection(verdict="NG", locations=("center", "center", "top_left"), params={"t": 1.0})
    store.upsert_inspection(first)
    store.upsert_inspection(first)
    assert store.count_inspections() == 1
    assert store.get_inspection(first.frame_id) == first
    assert store.get_inspection(first.frame_id.upper()) == first
    second = make_inspection(frame_id=first.frame_id, verdict="OK", params={"p": 2.0})
    store.upsert_inspections([second])
    assert store.get_inspection(first.frame_id) == second
    assert store.query_inspections(InspectionQuery(defect_location="center")) == []
    assert store.query_inspections(InspectionQuery(params={"t": (None, None)})) == []
    assert store.query_inspections(InspectionQuery(params={"p": (2.0, 2.0)})) == [second]
    assert store.get_inspection(new_uuid7()) is None


@pytest.fixture
def line(store: RecordStore) -> dict[str, Inspection]:
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
        "F": make_inspection(at_s=250.000001, camera_id="cam-2", params={"temp": 199.5}),
    }  # fmt: skip
    store.upsert_inspections(list(records.values()))
    return records


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        (InspectionQuery(), "FEDCBA"),
        (InspectionQuery(captured_from=T0 + _s(30), captured_to=T0 + _s(130)), "CB"),
        (InspectionQuery(captured_from=T0 + _s(200)), "FE"),
        (InspectionQuery(captured_to=T0 + _s(250.000001)), "EDCBA"),  # microseconds count
        (InspectionQuery(line_id="press-line-2"), "ED"),
        (InspectionQuery(camera_id="cam-2"), "FC"),
        (InspectionQuery(recipe="r2"), "EC"),
        (InspectionQuery(verdict="NG"), "ECB"),
        (InspectionQuery(defect_location="top_left"), "CB"),
        (InspectionQuery(severity="major"), "ECB"),
        (InspectionQuery(severity="critical"), ""),
        (InspectionQuery(params={"temp": (205.0, 225.0)}), "CB"),
        (InspectionQuery(params={"temp": (None, 200.0)}), "FA"),
        (InspectionQuery(params={"temp": (225.0, None)}), "E"),
        (InspectionQuery(params={"pressure": (None, None)}), "C"),
        (InspectionQuery(line_id="press-line-1", verdict="NG", params={"temp": (215.0, None)}), "C"),
        (InspectionQuery(limit=2), "FE"),
        (InspectionQuery(limit=2, offset=3), "CB"),
    ],
)
def test_filters_return_exactly_the_matching_records(
    store: RecordStore, line: dict[str, Inspection], filters: InspectionQuery, expected: str
) -> None:
    assert store.query_inspections(filters) == [line[key] for key in expected]
    if filters.limit == InspectionQuery().limit:
        assert store.count_inspections(filters) == len(expected)


def test_ng_rate_counts_per_bucket_line_and_camera(store: RecordStore, line: dict[str, Inspection]) -> None:
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


def test_an_empty_store_answers_empty(store: RecordStore) -> None:
    assert store.count_inspections() == 0
    assert store.query_inspections() == []
    assert store.ng_rate(60) == []
    assert store.list_alerts() == [] and store.list_dead_letters() == [] and store.count_dead_letters() == 0


def test_alerts_newest_first_and_replaced_by_id(store: RecordStore) -> None:
    base = Alert.model_validate(ALERT_EXAMPLE)
    later = base.model_copy(update={"alert_id": new_uuid7(), "raised_at": base.raised_at + _s(60)})
    store.add_alert(base)
    store.add_alert(later)
    store.add_alert(base.model_copy(update={"message": "changed"}))
    assert [a.message for a in store.list_alerts()] == [later.message, "changed"]
    assert store.list_alerts(limit=1) == [later]


def test_a_dead_letter_is_kept_once_per_frame_step_and_reason(store: RecordStore) -> None:
    first = DeadLetter.model_validate(DEAD_LETTER_EXAMPLE)
    again = first.model_copy(update={"failed_at": first.failed_at + _s(5)})
    other_step = first.model_copy(update={"source": "inspect", "failed_at": first.failed_at + _s(10)})
    no_frame = first.model_copy(update={"frame_id": None, "failed_at": first.failed_at + _s(20)})
    assert store.add_dead_letter(first) is True
    assert store.add_dead_letter(again) is False
    assert store.add_dead_letter(other_step) is True
    assert store.add_dead_letter(no_frame) is True and store.add_dead_letter(no_frame) is True
    assert store.list_dead_letters() == [no_frame, no_frame, other_step, first]
    assert store.count_dead_letters() == 4
