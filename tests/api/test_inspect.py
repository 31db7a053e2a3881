"""POST /v1/inspect with a real (tiny) trained model: verdicts, defects, stored records, dead letters."""

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient

from schemas.inspection import Inspection
from schemas.process import ProcessSample
from services.api.app import create_app
from services.api.settings import ApiSettings
from services.inference.thread import InferenceThread
from services.ingest.synthetic import render_part
from services.steps.admit import AdmissionRules
from services.steps.join import ProcessHistory
from services.storage.sqlite_record_store import SqliteRecordStore
from services.storage.tiered_blob_store import TieredBlobStore
from services.vision.inspector import Inspector
from services.vision.overlay import encode_png
from tests.api.conftest import API_KEY

FIELDS = {"line_id": "line-1", "station_id": "station-1", "camera_id": "cam-1", "recipe": "housing-A"}


@pytest.fixture
def model_client(
    settings: ApiSettings, records: SqliteRecordStore, blobs: TieredBlobStore, tiny_inference: InferenceThread
) -> TestClient:
    return TestClient(create_app(settings, records, blobs, tiny_inference), headers={"X-API-Key": API_KEY})


def _overlaps(a: dict[str, int], b: tuple[int, int, int, int]) -> bool:
    bx, by, bw, bh = b
    return a["x"] < bx + bw and bx < a["x"] + a["width"] and a["y"] < by + bh and by < a["y"] + a["height"]


def test_a_part_with_a_sink_mark_is_ng_with_the_defect_outlined(
    model_client: TestClient, records: SqliteRecordStore, blobs: TieredBlobStore
) -> None:
    image, _, planted = render_part(np.random.default_rng(0), ["sink_mark"])
    png = encode_png(image)
    fields = FIELDS | {"part_id": "P-000123", "captured_at": "2025-03-04T09:15:30+01:00"}

    response = model_client.post("/v1/inspect", data=fields, files={"image": ("p123.png", png, "image/png")})

    assert response.status_code == 200, response.text
    result = response.json()
    assert result["overall_grade"] == "NG"
    assert result["score"] >= 0.5
    assert (result["part_id"], result["timestamp"]) == ("P-000123", "2025-03-04T08:15:30Z")
    assert any(_overlaps(defect["bbox"], planted[0].bbox) for defect in result["defects"])
    assert {defect["type"] for defect in result["defects"]} == {"anomaly"}
    stored = records.get_inspection(result["frame_id"])
    assert stored is not None and stored.verdict == "NG" and stored.part_id == "P-000123"
    assert set(stored.timings_ms) >= {"decode", "infer"}
    assert stored.image is not None and blobs.get(stored.image.uri) == png  # the frame, kept as uploaded
    assert result["heatmap_url"] == f"http://testserver/v1/inspections/{result['frame_id']}/overlay.png"
    overlay = model_client.get(result["heatmap_url"])
    decoded = cv2.imdecode(np.frombuffer(overlay.content, np.uint8), cv2.IMREAD_COLOR)
    assert decoded is not None and decoded.shape[:2] == image.shape[:2]


def test_the_same_part_without_the_defect_is_ok(model_client: TestClient) -> None:
    image, _, _ = render_part(np.random.default_rng(0), [])
    files = {"image": ("p124.jpg", cv2.imencode(".jpg", image[:, :, ::-1])[1].tobytes(), "image/jpeg")}
    result = model_client.post("/v1/inspect", data=FIELDS, files=files).json()
    assert (result["overall_grade"], result["defects"]) == ("OK", [])
    assert datetime.fromisoformat(result["timestamp"]) <= datetime.now(UTC)


def test_a_corrupt_upload_is_422_and_a_dead_letter_that_keeps_its_bytes(
    model_client: TestClient, records: SqliteRecordStore, blobs: TieredBlobStore
) -> None:
    truncated = encode_png(render_part(np.random.default_rng(1), [])[0])[:300]

    response = model_client.post(
        "/v1/inspect", data=FIELDS, files={"image": ("bad.png", truncated, "image/png")}
    )

    assert response.status_code == 422
    assert response.json()["detail"].startswith("cannot use the image (undecodable): cannot decode image")
    (letter,) = records.list_dead_letters()
    assert letter.source == "decode"
    assert letter.reason.startswith("undecodable: cannot decode image")
    assert blobs.get(letter.original_ref) == truncated  # the upload is kept, as the line keeps a frame
    assert letter.frame_id is not None
    assert records.count_inspections() == 0
    metrics = model_client.get("/metrics").text
    assert 'linewatch_api_rejected_frames_total{camera_id="cam-1",line_id="line-1"} 1.0' in metrics


def test_ready_names_the_loaded_model(model_client: TestClient, tiny_inspector: Inspector) -> None:
    card = tiny_inspector.card
    assert model_client.get("/ready").json()["model"] == f"loaded: {card.name} {card.version}"


def test_without_a_model_inspect_is_503(client: TestClient) -> None:
    files = {"image": ("p.png", b"\x89PNG", "image/png")}
    response = client.post("/v1/inspect", data=FIELDS, files=files)
    assert response.status_code == 503
    assert "no model loaded" in response.json()["detail"]


@pytest.mark.parametrize(
    ("change", "field"),
    [({"line_id": ""}, "line_id"), ({"captured_at": "2025-03-04T08:15:30"}, "captured_at")],
)
def test_bad_metadata_is_422_naming_the_field(client: TestClient, change: dict[str, str], field: str) -> None:
    files = {"image": ("p.png", b"\x89PNG", "image/png")}
    response = client.post("/v1/inspect", data=FIELDS | change, files=files)
    assert response.status_code == 422
    assert [error["loc"][-1] for error in response.json()["detail"]] == [field]


def test_a_missing_image_is_422(client: TestClient) -> None:
    response = client.post("/v1/inspect", data=FIELDS)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "image"]


def test_beside_a_line_with_group_commit_the_blobs_are_synced_before_the_record_is_stored(
    settings: ApiSettings, records: SqliteRecordStore, tiny_inference: InferenceThread, tmp_path: Path
) -> None:
    """The demo serves the API on the line's store, which syncs blobs once per group: an upload's
    frame and heat map are made durable before its record is stored."""
    blobs = TieredBlobStore.at(tmp_path / "grouped", group_commit=True)
    synced_before_upsert: list[bool] = []

    upsert = records.upsert_inspections

    def checking_upsert(inspections: Sequence[Inspection]) -> None:
        synced_before_upsert.append(not blobs.files._unsynced and not blobs.small._unsynced)
        upsert(inspections)

    records.upsert_inspections = checking_upsert  # type: ignore[method-assign]
    try:
        client = TestClient(
            create_app(settings, records, blobs, tiny_inference), headers={"X-API-Key": API_KEY}
        )
        image, _, _ = render_part(np.random.default_rng(1), [])
        response = client.post(
            "/v1/inspect", data=FIELDS, files={"image": ("p.png", encode_png(image), "image/png")}
        )
        assert response.status_code == 200, response.text
        assert synced_before_upsert == [True]
    finally:
        blobs.close()


# ------------------------------------------------ uploads are admitted like frames off the line


def _client(
    app_args: dict[str, Any], settings: ApiSettings, records: SqliteRecordStore, blobs: Any
) -> TestClient:
    inference = app_args.pop("inference")
    return TestClient(
        create_app(settings, records, blobs, inference, **app_args), headers={"X-API-Key": API_KEY}
    )


def _png(seed: int = 1) -> bytes:
    return encode_png(render_part(np.random.default_rng(seed), [])[0])


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"recipe": "cap-B"}, "no_model"),  # no model for this recipe: not scored with another one
        ({"camera_id": "cam-9"}, "unknown_camera"),
        ({"line_id": "line-9"}, "unknown_line"),
    ],
)
def test_an_upload_the_line_would_refuse_is_refused_the_same_way(
    settings: ApiSettings,
    records: SqliteRecordStore,
    blobs: TieredBlobStore,
    tiny_inference: InferenceThread,
    change: dict[str, str],
    code: str,
) -> None:
    rules = AdmissionRules(
        recipes=frozenset({"housing-A"}), cameras=frozenset({"cam-1"}), lines=frozenset({"line-1"})
    )
    client = _client({"inference": tiny_inference, "rules": rules}, settings, records, blobs)
    response = client.post(
        "/v1/inspect", data=FIELDS | change, files={"image": ("p.png", _png(), "image/png")}
    )
    assert response.status_code == 422
    assert response.json()["detail"].startswith(f"cannot use the image ({code})")
    (letter,) = records.list_dead_letters()
    assert (letter.source, letter.reason.split(":")[0]) == ("ingest", code)
    assert records.count_inspections() == 0


def test_a_capture_time_in_the_future_is_refused_and_does_not_pin_the_feed(
    model_client: TestClient, records: SqliteRecordStore, blobs: TieredBlobStore
) -> None:
    png = _png()
    fields = FIELDS | {"captured_at": "2099-01-01T00:00:00Z"}
    response = model_client.post("/v1/inspect", data=fields, files={"image": ("p.png", png, "image/png")})
    assert response.status_code == 422
    assert "(future_timestamp)" in response.json()["detail"]
    (letter,) = records.list_dead_letters()
    assert blobs.get(letter.original_ref) == png  # the frame is kept for a look
    assert records.count_inspections() == 0


def test_a_frame_over_the_frame_limit_is_413_with_the_reason_oversized(
    settings: ApiSettings, records: SqliteRecordStore, blobs: TieredBlobStore, tiny_inference: InferenceThread
) -> None:
    rules = AdmissionRules(recipes=frozenset({"housing-A"}), max_frame_bytes=1000)
    client = _client({"inference": tiny_inference, "rules": rules}, settings, records, blobs)
    response = client.post("/v1/inspect", data=FIELDS, files={"image": ("p.png", _png(), "image/png")})
    assert response.status_code == 413
    assert response.json()["detail"].startswith("cannot use the image (oversized): frame is ")
    (letter,) = records.list_dead_letters()
    assert letter.reason.startswith("oversized: ")


def test_a_jpeg_decoded_at_reduced_size_is_measured_in_its_own_pixels(
    settings: ApiSettings, records: SqliteRecordStore, blobs: TieredBlobStore, tiny_inference: InferenceThread
) -> None:
    """A JPEG above the megapixel limit is decoded at a reduced size (here half); its record, defect
    boxes and overlay are those of the stored full-size frame."""
    image, _, planted = render_part(np.random.default_rng(0), ["sink_mark"])
    large = cv2.resize(image, (512, 512), interpolation=cv2.INTER_CUBIC)
    jpeg = cv2.imencode(".jpg", large[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
    rules = AdmissionRules(recipes=frozenset({"housing-A"}), max_megapixels=0.1)  # 512² is 0.26 MP
    client = _client({"inference": tiny_inference, "rules": rules}, settings, records, blobs)
    response = client.post("/v1/inspect", data=FIELDS, files={"image": ("big.jpg", jpeg, "image/jpeg")})
    assert response.status_code == 200, response.text
    result = response.json()
    x, y, w, h = planted[0].bbox
    assert result["overall_grade"] == "NG"
    assert not _overlaps({"x": x, "y": y, "width": w, "height": h}, (2 * x, 2 * y, 2 * w, 2 * h))
    # found where it is in the stored 512 x 512 frame, not where it is in the 256 x 256 decode
    assert any(_overlaps(d["bbox"], (2 * x, 2 * y, 2 * w, 2 * h)) for d in result["defects"])
    assert all(d["bbox"]["x"] + d["bbox"]["width"] <= 512 for d in result["defects"])
    stored = records.get_inspection(result["frame_id"])
    assert (
        stored is not None
        and stored.image is not None
        and (stored.image.width, stored.image.height) == (512, 512)
    )
    overlay = client.get(result["heatmap_url"])
    decoded = cv2.imdecode(np.frombuffer(overlay.content, np.uint8), cv2.IMREAD_COLOR)
    assert decoded is not None and decoded.shape[:2] == (512, 512)


def test_beside_a_line_an_upload_is_joined_to_the_process_in_force(
    settings: ApiSettings, records: SqliteRecordStore, blobs: TieredBlobStore, tiny_inference: InferenceThread
) -> None:
    history = ProcessHistory()
    taken = datetime(2025, 3, 4, 8, 0, 10, tzinfo=UTC)
    sample = ProcessSample(
        line_id="line-1", machine_id="imm-1", ts=taken - timedelta(seconds=2), params={"t": 61.0}
    )
    assert history.add(sample) is None
    client = _client({"inference": tiny_inference, "history": history}, settings, records, blobs)
    fields = FIELDS | {"captured_at": taken.isoformat()}
    response = client.post("/v1/inspect", data=fields, files={"image": ("p.png", _png(), "image/png")})
    assert response.status_code == 200, response.text
    stored = records.get_inspection(response.json()["frame_id"])
    assert stored is not None and stored.process.status == "ok" and stored.process.params == {"t": 61.0}
    assert stored.process.age_s == pytest.approx(2.0)
