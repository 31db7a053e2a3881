"""The root-cause ranking on the synthetic line, whose process→defect links are planted and known."""

from __future__ import annotations

import pytest

from services.analytics.causes import chi2_sf, nice_step, rank_causes
from services.ingest.synthetic_records import synthetic_inspections
from services.storage.analytics_query import QueryError
from services.storage.elasticsearch_record_store import ElasticsearchRecordStore
from services.storage.query import InspectionQuery
from services.storage.sqlite_record_store import SqliteRecordStore

PLANTED = {"mould_temp_c": "<", "injection_speed_mm_s": "≥", "hold_pressure_bar": "≥"}
"""The synthetic line's causes of NG and their risky sides (services.ingest.synthetic)."""


@pytest.mark.parametrize("seed", [1, 4])
def test_the_planted_causes_rank_first_and_the_proxy_is_explained(seed: int) -> None:
    """20,000 parts (2.8 h of the line). return_water_temp_c follows mould_temp_c (r = 0.93) but
    causes nothing; cycle_time_s is independent noise. Both separate NG from OK on their own."""
    with SqliteRecordStore(":memory:") as store:
        store.upsert_inspections(list(synthetic_inspections(20_000, seed=seed)))
        report = rank_causes(store)
    first_three = report.causes[:3]
    assert {cause.param: cause.side for cause in first_three} == PLANTED
    assert all(cause.status == "cause" for cause in first_three)
    assert all(cause.rate_ratio > 2.0 and cause.rate_ratio_ci[0] > 1.5 for cause in first_three)
    mould = next(c for c in report.causes if c.param == "mould_temp_c")
    assert 53.0 <= mould.threshold <= 58.0  # sink marks rise below ~57 °C (σ((55 − T) / 1.6))
    water = next(c for c in report.causes if c.param == "return_water_temp_c")
    assert water.rate_ratio > 2.0  # on its own it separates NG as well as the cause ...
    assert water.status == "explained" and water.explained_by == "mould_temp_c"  # ... but only through it
    assert report.causes.index(water) > report.causes.index(mould)
    cycle = next(c for c in report.causes if c.param == "cycle_time_s")
    assert cycle.status != "cause"
    assert "NG rate" in mould.sentence() and "mould_temp_c <" in mould.sentence()


def test_an_outcome_other_than_ng_has_its_own_cause() -> None:
    """Cracks (the only critical defects) come from hold pressure surges alone."""
    with SqliteRecordStore(":memory:") as store:
        store.upsert_inspections(list(synthetic_inspections(10_000, seed=2)))
        report = rank_causes(store, outcome=InspectionQuery(severity="critical"))
    assert report.outcome == "rate of severity=critical"
    top = report.causes[0]
    assert (top.param, top.side, top.status) == ("hold_pressure_bar", "≥", "cause")
    assert [c.param for c in report.causes if c.status == "cause"] == ["hold_pressure_bar"]


def test_filters_and_outcome_must_agree_and_empty_data_ranks_nothing() -> None:
    with SqliteRecordStore(":memory:") as store:
        assert rank_causes(store).causes == []
        with pytest.raises(QueryError, match="filters ask for verdict=OK"):
            rank_causes(store, InspectionQuery(verdict="OK"))
        with pytest.raises(QueryError, match="outcome needs one of"):
            rank_causes(store, outcome=InspectionQuery(line_id="x"))


def test_helpers() -> None:
    assert [nice_step(span, 40) for span in (10.0, 170.0, 2.4)] == [0.25, 5.0, 0.1]
    assert chi2_sf(3.841458820694124, 1) == pytest.approx(0.05)
    assert chi2_sf(5.991464547107979, 2) == pytest.approx(0.05)
    assert chi2_sf(7.814727903251178, 3) == pytest.approx(0.05)
    assert chi2_sf(0.0, 4) == 1.0


def test_the_ranking_is_the_same_on_sqlite_and_elasticsearch(
    sqlite_store: SqliteRecordStore, es_store: ElasticsearchRecordStore
) -> None:
    """Every number behind the ranking is an aggregation, so both stores give the same report."""
    on_sqlite, on_es = rank_causes(sqlite_store), rank_causes(es_store)
    assert (on_es.frames, on_es.hits) == (on_sqlite.frames, on_sqlite.hits)
    assert [c.param for c in on_es.causes] == [c.param for c in on_sqlite.causes]
    for mine, theirs in zip(on_es.causes, on_sqlite.causes, strict=True):
        assert (mine.side, mine.threshold, mine.frames_in, mine.hits_in, mine.status) == (
            theirs.side, theirs.threshold, theirs.frames_in, theirs.hits_in, theirs.status
        )  # fmt: skip
        assert mine.adjusted_z == pytest.approx(theirs.adjusted_z)
