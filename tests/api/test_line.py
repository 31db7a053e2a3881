"""NG rate, status per camera, dead letters and alerts."""

from datetime import UTC, datetime, timedelta

from fastapi.testclient import TestClient

from schemas.dead_letter import DeadLetter
from schemas.inspection import Verdict
from services.api.app import create_app
from services.api.settings import ApiSettings
from services.storage.sqlite_record_store import SqliteRecordStore
from services.storage.tiered_blob_store import TieredBlobStore
from tests.api.conftest import API_KEY
from tests.api.factories import T0, make_alert, make_inspection


def test_ng_rate_per_bucket_line_and_camera(client: TestClient, records: SqliteRecordStore) -> None:
    verdicts: list[tuple[int, Verdict]] = [(5, "NG"), (20, "OK"), (30, "OK"), (50, "NG"), (70, "OK")]
    for seconds, verdict in verdicts:
        records.upsert_inspection(make_inspection(at=T0 + timedelta(seconds=seconds), verdict=verdict))
    records.upsert_inspection(make_inspection(at=T0, line_id="press-line-2", verdict="NG"))

    response = client.get("/v1/ng-rate?bucket_s=60&line_id=press-line-1")

    assert response.status_code == 200
    assert response.json() == {
        "bucket_s": 60,
        "points": [
            {
                "bucket_start": "2025-03-04T08:00:00Z",
                "line_id": "press-line-1",
                "camera_id": "cam-top",
                "total": 4,
                "ng": 2,
                "ng_rate": 0.5,
            },
            {
                "bucket_start": "2025-03-04T08:01:00Z",
                "line_id": "press-line-1",
                "camera_id": "cam-top",
                "total": 1,
                "ng": 0,
                "ng_rate": 0.0,
            },
        ],
    }


def test_ng_rate_time_range_and_camera(client: TestClient, records: SqliteRecordStore) -> None:
    for minutes in range(5):
        records.upsert_inspection(make_inspection(at=T0 + timedelta(minutes=minutes), verdict="NG"))
    records.upsert_inspection(make_inspection(at=T0, camera_id="cam-side"))
    response = client.get(
        "/v1/ng-rate?bucket_s=120&camera_id=cam-top&from=2025-03-04T08:01:00Z&to=2025-03-04T08:04:00Z"
    )
    points = [(p["bucket_start"], p["total"]) for p in response.json()["points"]]
    assert points == [("2025-03-04T08:00:00Z", 1), ("2025-03-04T08:02:00Z", 2)]


def test_ng_rate_needs_a_positive_bucket(client: TestClient) -> None:
    assert client.get("/v1/ng-rate?bucket_s=0").status_code == 422


def test_status_per_camera_over_the_window(
    settings: ApiSettings, records: SqliteRecordStore, blobs: TieredBlobStore
) -> None:
    now = datetime.now(UTC)
    verdicts: list[tuple[int, Verdict]] = [(1, "NG"), (2, "OK"), (3, "OK"), (4, "NG"), (30, "NG")]
    for minutes, verdict in verdicts:
        records.upsert_inspection(make_inspection(at=now - timedelta(minutes=minutes), verdict=verdict))
    silent_since = now - timedelta(hours=2)
    records.upsert_inspection(make_inspection(at=silent_since, camera_id="cam-side"))
    records.upsert_inspection(make_inspection(at=now - timedelta(days=3), camera_id="cam-retired"))
    app = create_app(settings, records, blobs, line_status=lambda: {"state": "running", "frames_per_s": 2.0})

    response = TestClient(app).get("/v1/status?window_min=10", headers={"X-API-Key": API_KEY})

    assert response.status_code == 200
    status = response.json()
    assert status["window_min"] == 10
    assert status["line"] == {"state": "running", "frames_per_s": 2.0}
    cameras = {camera["camera_id"]: camera for camera in status["cameras"]}
    assert set(cameras) == {"cam-top", "cam-side"}
    top, side = cameras["cam-top"], cameras["cam-side"]
    assert (top["frames"], top["ng"], top["ng_rate"], top["last_verdict"]) == (4, 2, 0.5, "NG")
    assert datetime.fromisoformat(top["last_frame_at"]) == now - timedelta(minutes=1)
    assert (side["frames"], side["ng_rate"]) == (0, None)
    assert datetime.fromisoformat(side["last_frame_at"]) == silent_since


def test_status_without_a_running_line(client: TestClient) -> None:
    assert client.get("/v1/status").json()["line"] is None


def test_dead_letters_newest_first(client: TestClient, records: SqliteRecordStore) -> None:
    for minute in range(3):
        records.add_dead_letter(
            DeadLetter(
                source="decode",
                reason=f"undecodable: broken frame {minute}",
                original_ref="file:///frames/x.png",
                failed_at=T0 + timedelta(minutes=minute),
            )
        )
    response = client.get("/v1/dead-letters?limit=2")
    assert [letter["reason"] for letter in response.json()] == [
        "undecodable: broken frame 2",
        "undecodable: broken frame 1",
    ]


def test_alerts_newest_first(client: TestClient, records: SqliteRecordStore) -> None:
    older, newer = make_alert(at=T0), make_alert(line_id="press-line-2", at=T0 + timedelta(minutes=5))
    records.add_alert(older)
    records.add_alert(newer)
    response = client.get("/v1/alerts")
    assert [alert["alert_id"] for alert in response.json()] == [newer.alert_id, older.alert_id]
