"""/health, /ready and /metrics."""

from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.parser import text_string_to_metric_families

from services.api.app import create_app
from services.api.settings import ApiSettings
from services.storage.sqlite_record_store import SqliteRecordStore
from services.storage.tiered_blob_store import TieredBlobStore
from tests.api.conftest import API_KEY
from tests.api.factories import make_inspection


def test_health_is_always_ok(client: TestClient, records: SqliteRecordStore) -> None:
    records.close()
    assert client.get("/health").json() == {"status": "ok"}


def test_ready_when_the_store_answers(client: TestClient) -> None:
    response = client.get("/ready")
    assert response.status_code == 200
    assert response.json() == {"ready": True, "records": "ok", "model": "not configured"}


def test_not_ready_when_the_store_fails(client: TestClient, records: SqliteRecordStore) -> None:
    records.close()
    response = client.get("/ready")
    assert response.status_code == 503
    assert response.json()["ready"] is False
    assert response.json()["records"].startswith("error: ")


def _samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    return {
        family.name: [(sample.labels, sample.value) for sample in family.samples]
        for family in text_string_to_metric_families(text)
    }


def test_metrics_are_prometheus_text_with_the_line_and_the_api(
    settings: ApiSettings, records: SqliteRecordStore, blobs: TieredBlobStore
) -> None:
    line_registry = CollectorRegistry()
    Counter("linewatch_line_frames", "Frames off the line", registry=line_registry).inc(7)
    client = TestClient(create_app(settings, records, blobs, registry=line_registry))
    records.upsert_inspection(inspection := make_inspection())
    headers = {"X-API-Key": API_KEY}
    assert client.get(f"/v1/inspections/{inspection.frame_id}", headers=headers).status_code == 200
    assert client.get("/v1/inspections/not-there", headers=headers).status_code == 404

    response = client.get("/metrics", headers=headers)

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = _samples(response.text)
    assert samples["linewatch_line_frames"] == [({}, 7.0)]
    requests = {
        (labels["route"], labels["status"]): value
        for labels, value in samples["linewatch_api_requests"]
        if labels.get("method") == "GET"
    }
    assert requests[("/v1/inspections/{frame_id}", "200")] == 1.0
    assert requests[("/v1/inspections/{frame_id}", "404")] == 1.0
    assert not any(frame_id == inspection.frame_id for (frame_id, _) in requests)
    assert "linewatch_api_request_seconds" in samples


def test_metrics_need_the_key(client: TestClient) -> None:
    assert TestClient(client.app).get("/metrics").status_code == 401
