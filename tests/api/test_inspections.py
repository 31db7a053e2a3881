"""GET /v1/inspections (filters), one inspection, its overlay PNG."""

from datetime import timedelta

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient

from schemas.defect import BoundingBox
from schemas.inspection import Inspection
from services.storage.sqlite_record_store import SqliteRecordStore
from services.storage.tiered_blob_store import TieredBlobStore
from services.vision.overlay import NO_FRAME_GREY, encode_heatmap
from tests.api.factories import FRAME_HW, T0, WARM_BOX, make_defect, make_inspection


@pytest.fixture
def seeded(records: SqliteRecordStore) -> dict[str, Inspection]:
    """Five inspections a minute apart, differing in one thing each."""
    inspections = {
        "ok": make_inspection(at=T0, params={"mould_temp_c": 60.0}),
        "ng_top_left": make_inspection(
            at=T0 + timedelta(minutes=1), verdict="NG", locations=("top_left",), params={"mould_temp_c": 52.0}
        ),
        "other_line": make_inspection(at=T0 + timedelta(minutes=2), line_id="press-line-2"),
        "other_camera": make_inspection(at=T0 + timedelta(minutes=3), camera_id="cam-side"),
        "other_recipe": make_inspection(
            at=T0 + timedelta(minutes=4), recipe="cap-B", verdict="NG", locations=("center",)
        ),
    }
    for inspection in inspections.values():
        records.upsert_inspection(inspection)
    return inspections


def _names(client: TestClient, seeded: dict[str, Inspection], query: str) -> list[str]:
    response = client.get(f"/v1/inspections?{query}")
    assert response.status_code == 200, response.text
    by_id = {inspection.frame_id: name for name, inspection in seeded.items()}
    return [by_id[item["frame_id"]] for item in response.json()["items"]]


def test_list_is_newest_first_with_a_total_and_without_embeddings(
    client: TestClient, seeded: dict[str, Inspection]
) -> None:
    page = client.get("/v1/inspections?limit=2&offset=1").json()
    assert (page["total"], page["limit"], page["offset"]) == (5, 2, 1)
    assert [item["frame_id"] for item in page["items"]] == [
        seeded["other_camera"].frame_id,
        seeded["other_line"].frame_id,
    ]
    assert all(item["embedding"] == [] for item in page["items"])
    full = client.get("/v1/inspections?limit=1&with_embedding=true").json()["items"][0]
    assert full["embedding"] == [0.1, 0.2, 0.3]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("line_id=press-line-2", ["other_line"]),
        ("camera_id=cam-side", ["other_camera"]),
        ("recipe=cap-B", ["other_recipe"]),
        ("verdict=NG", ["other_recipe", "ng_top_left"]),
        ("defect_location=top_left", ["ng_top_left"]),
        ("from=2025-03-04T08:01:00Z&to=2025-03-04T08:03:00Z", ["other_line", "ng_top_left"]),
        ("from=2025-03-04T09:03:00%2B01:00", ["other_recipe", "other_camera"]),
        ("param=mould_temp_c:50:55", ["ng_top_left"]),
        ("param=mould_temp_c:55:", ["ok"]),
        ("param=mould_temp_c::70&verdict=OK", ["ok"]),
        ("param=mould_temp_c:50:70&param=hold_pressure_bar::600", []),
    ],
)
def test_filters(client: TestClient, seeded: dict[str, Inspection], query: str, expected: list[str]) -> None:
    assert _names(client, seeded, query) == expected


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ("param=mould_temp_c", "expected name:min:max"),
        ("param=mould_temp_c:low:70", "'low' is not a number"),
        ("param=mould_temp_c:70:50", "min 70.0 is above max 50.0"),
        ("from=2025-03-04T08:00:00", "naive datetime"),
        ("from=2025-03-04T09:00:00Z&to=2025-03-04T08:00:00Z", "captured_from must be before captured_to"),
    ],
)
def test_bad_filters_are_422_with_the_reason(client: TestClient, query: str, reason: str) -> None:
    response = client.get(f"/v1/inspections?{query}")
    assert response.status_code == 422
    assert reason in str(response.json()["detail"])


def test_one_inspection_whole(client: TestClient, seeded: dict[str, Inspection]) -> None:
    wanted = seeded["ng_top_left"]
    response = client.get(f"/v1/inspections/{wanted.frame_id}")
    assert response.status_code == 200
    assert Inspection.model_validate(response.json()) == wanted


def test_unknown_inspection_is_404_naming_it(client: TestClient) -> None:
    response = client.get("/v1/inspections/0195603a-0000-7000-8000-000000000000")
    assert response.status_code == 404
    assert response.json() == {"detail": "no inspection with frame_id '0195603a-0000-7000-8000-000000000000'"}


def _decode(png: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None
    return image


def test_the_overlay_is_the_heat_map_over_the_frame_with_the_defects_boxed(
    client: TestClient, records: SqliteRecordStore, blobs: TieredBlobStore
) -> None:
    inspection = make_inspection(blobs, verdict="NG", locations=("center",))
    records.upsert_inspection(inspection)
    assert inspection.image is not None

    response = client.get(f"/v1/inspections/{inspection.frame_id}/overlay.png")

    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    overlay, frame = _decode(response.content), _decode(blobs.get(inspection.image.uri))
    assert overlay.shape == frame.shape and overlay.shape[:2] == FRAME_HW
    x, y, w, h = WARM_BOX
    cold = np.ones(FRAME_HW, bool)
    cold[max(0, y - 14) : y + h + 4, max(0, x - 4) :] = False  # the warm box, its frame and label
    np.testing.assert_array_equal(overlay[cold], frame[cold])  # cold: the frame untouched
    inside = (slice(y + 6, y + h - 6), slice(x + 6, x + w - 6))
    assert np.abs(overlay[inside].astype(int) - frame[inside]).mean() > 20  # warm: tinted
    assert tuple(overlay[y + h // 2, x]) == (0, 140, 255)  # the box's edge: major = orange (BGR)


def test_without_the_frame_the_overlay_is_drawn_over_grey(
    client: TestClient, records: SqliteRecordStore, blobs: TieredBlobStore
) -> None:
    """keep_frames: false deletes frames; the heat map and the boxes are still shown."""
    records.upsert_inspection(inspection := make_inspection(blobs, verdict="NG", locations=("center",)))
    assert inspection.image is not None
    blobs.delete(inspection.image.uri)
    response = client.get(f"/v1/inspections/{inspection.frame_id}/overlay.png")
    assert response.status_code == 200
    overlay = _decode(response.content)
    assert overlay.shape[:2] == FRAME_HW
    assert (overlay[2, 2] == NO_FRAME_GREY).all()
    x, y, _, h = WARM_BOX
    assert tuple(overlay[y + h // 2, x]) == (0, 140, 255)


def test_overlay_thumbnail_is_scaled_down(
    client: TestClient, records: SqliteRecordStore, blobs: TieredBlobStore
) -> None:
    records.upsert_inspection(inspection := make_inspection(blobs))
    response = client.get(f"/v1/inspections/{inspection.frame_id}/overlay.png?max_side=32")
    assert _decode(response.content).shape[:2] == (24, 32)


def test_overlay_is_404_without_a_heat_map(
    client: TestClient, records: SqliteRecordStore, blobs: TieredBlobStore
) -> None:
    records.upsert_inspection(never_stored := make_inspection())
    records.upsert_inspection(deleted := make_inspection(blobs))
    assert deleted.heatmap is not None
    blobs.delete(deleted.heatmap.uri)

    response = client.get(f"/v1/inspections/{never_stored.frame_id}/overlay.png")
    assert (response.status_code, response.json()["detail"]) == (
        404,
        f"inspection {never_stored.frame_id} has no heat map stored",
    )
    response = client.get(f"/v1/inspections/{deleted.frame_id}/overlay.png")
    assert response.status_code == 404
    assert "no longer in the blob store" in response.json()["detail"]


def test_a_large_frames_preview_is_drawn_small_and_matches_the_full_overlay(
    client: TestClient, records: SqliteRecordStore, blobs: TieredBlobStore
) -> None:
    """A 12 MP JPEG frame: its 200-px preview is decoded at a reduced size and drawn at preview
    size (never the full overlay shrunk), and looks like the full overlay shrunk, boxes included."""
    height, width = 3000, 4000
    yy, xx = np.mgrid[0:height, 0:width]
    pixels = np.stack([(xx // 16) % 256, (yy // 16) % 256, ((xx + yy) // 32) % 256], axis=2).astype(np.uint8)
    ok, jpeg = cv2.imencode(".jpg", pixels[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    from services.vision.images import decode_image

    reduced = decode_image(jpeg.tobytes(), max_side=200)
    assert 200 <= max(reduced.shape[:2]) <= width // 8 * 2  # the DCT-domain 1/8 scale, not the full frame
    image = blobs.put(jpeg.tobytes(), "jpeg", width, height)
    score_map = np.zeros((height, width), np.float32)
    score_map[900:1500, 1200:2000] = 0.9
    data, hw, hh = encode_heatmap(score_map, (height, width))
    heatmap = blobs.put(data, "png", hw, hh)
    defect = make_defect("center").model_copy(
        update={"bbox": BoundingBox(x=1200, y=900, width=800, height=600), "severity": "critical"}
    )
    inspection = make_inspection().model_copy(
        update={"image": image, "heatmap": heatmap, "defects": [defect], "verdict": "NG"}
    )
    records.upsert_inspection(inspection)
    preview = _decode(client.get(f"/v1/inspections/{inspection.frame_id}/overlay.png?max_side=200").content)
    assert preview.shape[:2] == (150, 200)
    full = _decode(client.get(f"/v1/inspections/{inspection.frame_id}/overlay.png").content)
    assert full.shape[:2] == (height, width)
    shrunk = cv2.resize(full, (200, 150), interpolation=cv2.INTER_AREA)
    assert np.abs(preview.astype(int) - shrunk.astype(int)).mean() < 8
    box = np.abs(preview[45:75, 60:100].astype(int) - shrunk[45:75, 60:100].astype(int)).mean()
    assert box < 12  # the warm area and its box sit in the same place
