"""The analytics query model on the record stores: every store gives the reference's numbers."""

from __future__ import annotations

import math
from datetime import timedelta

import pytest
from pydantic import ValidationError

from schemas.inspection import Inspection
from services.ingest.synthetic import DEFAULT_START
from services.storage.analytics_query import AnalyticsQuery, GroupBy, QueryError, ResultRow, describe_key
from services.storage.ports import AnalyticsStore
from services.storage.query import InspectionQuery
from services.storage.sqlite_record_store import SqliteRecordStore
from tests.analytics.reference import reference_aggregate

QUERIES = {
    "everything": AnalyticsQuery(),
    "by line and camera": AnalyticsQuery(group_by=(GroupBy(field="line_id"), GroupBy(field="camera_id"))),
    "by recipe, NG only": AnalyticsQuery(
        filters=InspectionQuery(verdict="NG"), group_by=(GroupBy(field="recipe"),)
    ),
    "by process status": AnalyticsQuery(group_by=(GroupBy(field="process_status"),)),
    "mould temp bins of 1.5": AnalyticsQuery(group_by=(GroupBy(field="param:mould_temp_c", width=1.5),)),
    "negative-free edges": AnalyticsQuery(
        group_by=(GroupBy(field="param:hold_pressure_bar", edges=(580.0, 600.0, 620.0, 680.0)),)
    ),
    "location x time": AnalyticsQuery(
        group_by=(GroupBy(field="defect_location"), GroupBy(field="time", interval_s=300)),
        measures=("frames", "ng_rate", "mean_defect_area_px"),
    ),
    "severity by line": AnalyticsQuery(group_by=(GroupBy(field="severity"), GroupBy(field="line_id"))),
    "cluster by speed": AnalyticsQuery(
        group_by=(GroupBy(field="cluster_id"), GroupBy(field="param:injection_speed_mm_s", width=5.0))
    ),
    "filtered hard": AnalyticsQuery(
        filters=InspectionQuery(
            captured_from=DEFAULT_START + timedelta(minutes=3),
            captured_to=DEFAULT_START + timedelta(minutes=11),
            line_id="line-1",
            severity="major",
            params={"mould_temp_c": (None, 60.0), "return_water_temp_c": (30.0, None)},
        ),
        group_by=(GroupBy(field="camera_id"), GroupBy(field="param:cycle_time_s", edges=(24.0, 24.5))),
    ),
    "cluster and location filters": AnalyticsQuery(
        filters=InspectionQuery(cluster_id=1, defect_location="center"), group_by=(GroupBy(field="verdict"),)
    ),
    "nothing matches": AnalyticsQuery(filters=InspectionQuery(line_id="line-9")),
}


def assert_same_rows(got: list[ResultRow], expected: list[ResultRow]) -> None:
    assert [row.keys for row in got] == [row.keys for row in expected]
    for mine, theirs in zip(got, expected, strict=True):
        assert mine.values.keys() == theirs.values.keys()
        for name, value in theirs.values.items():
            assert mine.values[name] == pytest.approx(value, rel=1e-9, abs=1e-9), (mine.keys, name)


@pytest.mark.parametrize("name", list(QUERIES))
def test_every_store_gives_the_reference_numbers(
    analytics_store: AnalyticsStore, records: list[Inspection], name: str
) -> None:
    """Query parity: SQLite's SQL and Elasticsearch's aggregations agree with the reference."""
    expected = reference_aggregate(records, QUERIES[name])
    assert_same_rows(analytics_store.aggregate(QUERIES[name]), expected)
    if name != "nothing matches":
        assert expected, "the query should match something"


def test_totals_add_up(sqlite_store: SqliteRecordStore, records: list[Inspection]) -> None:
    (total,) = sqlite_store.aggregate(AnalyticsQuery())
    assert total.keys == ()
    assert total.values["frames"] == len(records)
    assert total.values["ng"] == sum(r.verdict == "NG" for r in records)
    by_line = sqlite_store.aggregate(AnalyticsQuery(group_by=(GroupBy(field="line_id"),)))
    assert sum(int(row.values["frames"] or 0) for row in by_line) == len(records)
    bins = sqlite_store.aggregate(AnalyticsQuery(group_by=(GroupBy(field="param:mould_temp_c", width=2.0),)))
    with_param = sum("mould_temp_c" in r.process.params for r in records)
    assert sum(int(row.values["frames"] or 0) for row in bins) == with_param < len(records)
    for row in bins:
        ((low, high),) = row.keys  # type: ignore[misc, str-unpack]
        assert isinstance(low, float) and isinstance(high, float)
        assert low is not None and high is not None and math.isclose(high - low, 2.0)


def test_parameter_stats(analytics_store: AnalyticsStore, records: list[Inspection]) -> None:
    stats = analytics_store.parameter_stats()
    assert set(stats) == {"mould_temp_c", "injection_speed_mm_s", "hold_pressure_bar", "cycle_time_s",
                          "return_water_temp_c"}  # fmt: skip
    water = [
        r.process.params["return_water_temp_c"] for r in records if "return_water_temp_c" in r.process.params
    ]
    assert stats["return_water_temp_c"].frames == len(water)
    assert stats["return_water_temp_c"].minimum == min(water) and stats["return_water_temp_c"].maximum == max(
        water
    )
    line2 = analytics_store.parameter_stats(InspectionQuery(line_id="line-2"))
    assert "return_water_temp_c" not in line2 and line2["mould_temp_c"].frames > 0


@pytest.mark.parametrize(
    ("group", "message"),
    [
        ({"field": "colour"}, "unknown group field 'colour'"),
        ({"field": "param:"}, "param: needs a process parameter name"),
        ({"field": "time"}, "needs interval_s"),
        ({"field": "param:t"}, "either a bin width or bin edges"),
        ({"field": "param:t", "width": 1.0, "edges": [1.0]}, "either a bin width or bin edges"),
        ({"field": "param:t", "edges": [2.0, 1.0]}, "strictly increasing"),
        ({"field": "line_id", "width": 1.0}, "apply to process parameters"),
        ({"field": "line_id", "interval_s": 60}, "applies to time"),
    ],
)
def test_a_bad_group_says_what_is_wrong(group: dict[str, object], message: str) -> None:
    with pytest.raises((QueryError, ValidationError), match=message):
        GroupBy.model_validate(group)


def test_a_bad_query_says_what_is_wrong() -> None:
    with pytest.raises(ValidationError, match="at most one defect field"):
        AnalyticsQuery(group_by=(GroupBy(field="severity"), GroupBy(field="cluster_id")))
    with pytest.raises(ValidationError, match="grouped twice"):
        AnalyticsQuery(group_by=(GroupBy(field="line_id"), GroupBy(field="line_id")))
    with pytest.raises(ValidationError, match="at least one measure"):
        AnalyticsQuery(measures=())
    with pytest.raises(ValidationError):
        AnalyticsQuery(group_by=tuple(GroupBy(field=f) for f in ("line_id", "camera_id", "recipe")))


def test_keys_read_as_an_engineer_writes_them() -> None:
    group = GroupBy(field="param:t", edges=(55.0, 60.5))
    assert [describe_key(group, key) for key in [(None, 55.0), (55.0, 60.5), (60.5, None)]] == [
        "< 55", "[55, 60.5)", "≥ 60.5"
    ]  # fmt: skip
