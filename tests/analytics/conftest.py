"""Records of the synthetic line (no pixels rendered) in every analytics store."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import cast

import pytest

from schemas.inspection import Inspection
from schemas.process import ProcessSnapshot
from services.ingest.synthetic_records import synthetic_inspections
from services.storage.elasticsearch_record_store import ElasticsearchRecordStore
from services.storage.ports import AnalyticsStore
from services.storage.sqlite_record_store import SqliteRecordStore
from tests.elasticsearch_server import es_proxy, es_server_url, es_url, store_url

__all__ = ["es_proxy", "es_server_url", "es_url"]


def mixed_records() -> list[Inspection]:
    """2,400 records on two lines and three cameras; defects carry cluster ids 0-2; every 50th
    frame has no process data, and line-2 records no return water temperature."""
    records = list(synthetic_inspections(1500, seed=5, camera_ids=("cam-1", "cam-2")))
    line2 = synthetic_inspections(900, seed=6, line_id="line-2", camera_ids=("cam-3",), frame_period_s=0.8)
    for record in line2:
        params = {k: v for k, v in record.process.params.items() if k != "return_water_temp_c"}
        records.append(
            record.model_copy(update={"process": record.process.model_copy(update={"params": params})})
        )
    out = []
    for i, record in enumerate(records):
        defects = [d.model_copy(update={"cluster_id": (i + j) % 3}) for j, d in enumerate(record.defects)]
        update: dict[str, object] = {"defects": defects}
        if i % 50 == 0:
            update["process"] = ProcessSnapshot(status="missing")
        if i % 7 == 0:
            update["recipe"] = "housing-B"
            update["captured_at"] = record.captured_at + timedelta(milliseconds=3)
        out.append(record.model_copy(update=update))
    return out


@pytest.fixture(scope="session")
def records() -> list[Inspection]:
    return mixed_records()


@pytest.fixture
def sqlite_store(records: list[Inspection]) -> Iterator[SqliteRecordStore]:
    with SqliteRecordStore(":memory:") as store:
        store.upsert_inspections(records)
        yield store


@pytest.fixture(scope="session")
def es_store(es_server_url: str, records: list[Inspection]) -> Iterator[ElasticsearchRecordStore]:
    """The same records in Elasticsearch (osmem-server, or LINEWATCH_TEST_ES_URL), once a session."""
    with ElasticsearchRecordStore(store_url(es_server_url, f"lwt-{uuid.uuid4().hex[:10]}")) as store:
        store.upsert_inspections(records)
        store.refresh_now()
        yield store


@pytest.fixture(params=["sqlite", "elasticsearch"])
def analytics_store(request: pytest.FixtureRequest) -> AnalyticsStore:
    """Each analytics store holding :func:`mixed_records`."""
    return cast(
        AnalyticsStore, request.getfixturevalue(f"{request.param.replace('elasticsearch', 'es')}_store")
    )
