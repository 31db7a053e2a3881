"""The review queue over HTTP on real stores (SQLite labels, the file blob store)."""

from __future__ import annotations

import base64
from pathlib import Path

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient

from services.api.app import create_app
from services.api.settings import ApiSettings
from services.review.autolabel import decode_png
from services.storage.sqlite_label_store import SqliteLabelStore
from services.storage.sqlite_record_store import SqliteRecordStore
from services.storage.tiered_blob_store import TieredBlobStore
from tests.api.conftest import API_KEY
from tests.storage.factories import make_label


@pytest.fixture
def labels(tmp_path: Path) -> SqliteLabelStore:
    store = SqliteLabelStore(tmp_path / "labels.db")
    store.add_labels(
        [
            make_label(at_s=0, verdict="REVIEW", queued=True, priority=0.3),
            make_label(at_s=1, verdict="NG", queued=True, priority=1.2),
            make_label(at_s=2, verdict="NG"),
        ]
    )
    return store


@pytest.fixture
def review_client(
    settings: ApiSettings, records: SqliteRecordStore, blobs: TieredBlobStore, labels: SqliteLabelStore
) -> TestClient:
    return TestClient(create_app(settings, records, blobs, labels=labels), headers={"X-API-Key": API_KEY})


def test_the_queue_and_a_decision_over_http(review_client: TestClient, blobs: TieredBlobStore) -> None:
    page = review_client.get("/v1/labels").json()
    assert page["total"] == 2 and [item["priority"] for item in page["items"]] == [1.2, 0.3]
    assert review_client.get("/v1/labels", params={"status": "auto"}).json()["total"] == 1
    first = page["items"][0]["frame_id"]
    mask = np.zeros((48, 64), np.uint8)
    mask[5:9, 5:15] = 255
    png = base64.b64encode(cv2.imencode(".png", mask)[1].tobytes()).decode()
    body = {"decision": "defect", "reviewer": "m.keller", "defect_class": "crack", "expected_revision": 0}
    answer = review_client.post(f"/v1/labels/{first}/review", json=body | {"mask_png_base64": png})
    assert answer.status_code == 200, answer.text
    label = answer.json()
    assert label["status"] == "reviewed" and label["revision"] == 1
    assert np.array_equal(decode_png(blobs.get(label["review"]["mask"]["uri"])), mask)
    stale = review_client.post(
        f"/v1/labels/{first}/review", json=body | {"decision": "good", "defect_class": None}
    )
    assert stale.status_code == 409 and "revision 1, not 0" in stale.json()["detail"]
    shown = review_client.get(f"/v1/labels/{first}").json()
    assert [event["action"] for event in shown["history"]] == ["queued", "reviewed"]
    assert shown["history"][1]["actor"] == "m.keller"
    assert review_client.get("/v1/labels").json()["total"] == 1


def test_bad_requests_get_clear_answers(review_client: TestClient, settings: ApiSettings) -> None:
    first = review_client.get("/v1/labels").json()["items"][0]["frame_id"]
    contradiction = {"decision": "good", "reviewer": "x", "defect_class": "crack"}
    answer = review_client.post(f"/v1/labels/{first}/review", json=contradiction)
    assert answer.status_code == 422 and "no defect class or mask" in answer.json()["detail"]
    not_png = {"decision": "defect", "reviewer": "x", "mask_png_base64": base64.b64encode(b"nope").decode()}
    answer = review_client.post(f"/v1/labels/{first}/review", json=not_png)
    assert answer.status_code == 422 and "PNG" in answer.json()["detail"]
    unknown = "0190a000-0000-7000-8000-000000000000"
    assert (
        review_client.post(
            f"/v1/labels/{unknown}/review", json={"decision": "good", "reviewer": "x"}
        ).status_code
        == 404
    )
    assert review_client.get(f"/v1/labels/{unknown}").status_code == 404
    assert review_client.get("/v1/labels", headers={"X-API-Key": "wrong"}).status_code == 403
    current = review_client.get(f"/v1/labels/{first}").json()["label"]
    assert current["status"] == "queued" and current["revision"] == 0  # nothing changed


def test_without_a_label_store_the_routes_say_so(client: TestClient) -> None:
    answer = client.get("/v1/labels")
    assert answer.status_code == 503 and "no label store" in answer.json()["detail"]
