"""GET /v1/models: the served models' thresholds and operating curves, from a real trained card."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from services.api.app import create_app
from services.api.settings import ApiSettings
from services.storage.sqlite_record_store import SqliteRecordStore
from services.storage.tiered_blob_store import TieredBlobStore
from services.vision.inspector import Inspector
from services.vision.operating import estimates
from tests.api.conftest import API_KEY


def test_the_models_and_their_operating_curves(
    settings: ApiSettings, records: SqliteRecordStore, blobs: TieredBlobStore, tiny_inspector: Inspector
) -> None:
    card = tiny_inspector.card
    assert card.operating is not None and card.review is not None
    app = create_app(settings, records, blobs, cards={"housing-A": card})
    client = TestClient(app, headers={"X-API-Key": API_KEY})
    (model,) = client.get("/v1/models").json()["models"]
    assert (model["recipe"], model["version"], model["kind"]) == ("housing-A", card.version, "patchcore")
    assert model["ng_threshold"] == card.image_calibration.threshold
    assert model["review_threshold"] == card.review.threshold < model["ng_threshold"]
    expected = estimates(card.operating, card.image_calibration.threshold, card.review)
    assert model["estimates"]["miss_rate"] == pytest.approx(expected["miss_rate"])
    curve = model["curve"]
    assert len(curve) > 10
    thresholds = [p["threshold"] for p in curve]
    assert thresholds == sorted(thresholds)
    false_alarms = [p["false_alarm_rate"] for p in curve]
    misses = [p["miss_rate"] for p in curve]
    assert false_alarms == sorted(false_alarms, reverse=True) and misses == sorted(misses)
    assert TestClient(create_app(settings, records, blobs), headers={"X-API-Key": API_KEY}).get(
        "/v1/models"
    ).json() == {"models": []}
