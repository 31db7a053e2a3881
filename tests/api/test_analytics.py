"""POST /v1/analytics/query and /v1/analytics/causes over a SQLite store of the synthetic line."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from services.ingest.synthetic_records import synthetic_inspections
from services.storage.sqlite_record_store import SqliteRecordStore


@pytest.fixture
def filled(client: TestClient, records: SqliteRecordStore) -> TestClient:
    records.upsert_inspections(list(synthetic_inspections(8_000, seed=2)))
    return client


def test_query_groups_and_measures(filled: TestClient) -> None:
    body = {
        "filters": {"verdict": "NG"},
        "group_by": [{"field": "param:mould_temp_c", "edges": [55, 60]}, {"field": "severity"}],
        "measures": ["frames", "ng_rate"],
    }
    response = filled.post("/v1/analytics/query", json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["group_by"] == ["param:mould_temp_c", "severity"]
    first = answer["rows"][0]
    assert first["param:mould_temp_c"] == {"from": None, "to": 55.0} and first["severity"] == "critical"
    assert all(row["ng_rate"] == 1.0 for row in answer["rows"])  # NG frames only
    everything = filled.post("/v1/analytics/query", json={}).json()["rows"]
    assert everything[0]["frames"] == 8_000


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"group_by": [{"field": "param:speed", "width": 2}]}, "unknown process parameter 'speed'"),
        ({"group_by": [{"field": "colour"}]}, "unknown group field 'colour'"),
        ({"filters": {"params": {"mould_temp_c": [60, 50]}}}, "min 60.0 is above max 50.0"),
        ({"measures": ["median"]}, "measures"),
    ],
)
def test_a_bad_query_is_422_with_the_reason(
    filled: TestClient, body: dict[str, object], message: str
) -> None:
    response = filled.post("/v1/analytics/query", json=body)
    assert response.status_code == 422
    assert message in response.text


def test_causes_rank_the_planted_parameters(filled: TestClient) -> None:
    response = filled.post("/v1/analytics/causes", json={})
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["outcome"] == "NG rate" and report["frames"] == 8_000
    assert {c["param"] for c in report["causes"][:3]} == {"mould_temp_c", "injection_speed_mm_s",
                                                          "hold_pressure_bar"}  # fmt: skip
    assert report["causes"][0]["sentence"].startswith("NG rate ")
    critical = filled.post("/v1/analytics/causes", json={"outcome": {"severity": "critical"}}).json()
    assert critical["causes"][0]["param"] == "hold_pressure_bar"
    bad = filled.post("/v1/analytics/causes", json={"filters": {"verdict": "OK"}})
    assert bad.status_code == 422 and "filters ask for verdict=OK" in bad.text


def test_analytics_needs_the_key(client: TestClient) -> None:
    assert client.post("/v1/analytics/query", json={}, headers={"X-API-Key": "wrong"}).status_code == 403
    assert TestClient(client.app).post("/v1/analytics/causes", json={}).status_code == 401
