"""Heat maps: the anomaly map alone, small and frame-aligned; overlays drawn from it; split steps."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import pytest

from schemas.frame import Frame
from services.ingest.frame_ids import replay_frame_id
from services.ingest.synthetic import SyntheticLine, render_part
from services.steps.admit import encode_frame
from services.steps.detect import detect_batch
from services.steps.finish import finish_batch, store_heatmap
from services.storage.file_blob_store import FileBlobStore
from services.vision.inspector import Inspector
from services.vision.overlay import (
    HEATMAP_MAX_SIDE,
    NO_FRAME_GREY,
    Mark,
    decode_heatmap,
    encode_heatmap,
    heatmap_levels,
    heatmap_size,
    render_overlay,
)


def smooth_map(height: int, width: int, seed: int = 0) -> np.ndarray:
    noise = np.random.default_rng(seed).random((height, width)).astype(np.float32)
    return cv2.GaussianBlur(noise, (0, 0), 6) * 0.6 + 0.2


@pytest.mark.parametrize(
    ("width", "height", "expected"),
    [(256, 256, (128, 128)), (2448, 2048, (128, 107)), (100, 60, (100, 60)), (4000, 10, (128, 1))],
)
def test_the_heat_map_keeps_the_frames_shape_within_the_side_limit(
    width: int, height: int, expected: tuple[int, int]
) -> None:
    assert heatmap_size(width, height) == expected
    assert max(expected) <= HEATMAP_MAX_SIDE


def test_a_heat_map_round_trips_to_within_one_level() -> None:
    score_map = smooth_map(96, 64)
    data, width, height = encode_heatmap(score_map, (96, 64))
    assert (width, height) == (64, 96)  # small enough: stored at the frame's own size
    np.testing.assert_allclose(decode_heatmap(data), score_map, atol=0.5 / 255 + 1e-6)


def test_scores_beyond_zero_and_one_are_clipped() -> None:
    data, _, _ = encode_heatmap(np.array([[-0.5, 0.0], [1.0, 3.0]], np.float32), (2, 2))
    np.testing.assert_array_equal(decode_heatmap(data), [[0.0, 0.0], [1.0, 1.0]])


def test_a_map_of_an_roi_lands_where_the_roi_is_and_is_cold_outside() -> None:
    roi = (64, 32, 128, 64)  # x, y, width, height in a 256 x 256 frame
    data, width, height = encode_heatmap(np.ones((64, 128), np.float32), (256, 256), roi)
    stored = decode_heatmap(data)
    assert (width, height) == (128, 128) and stored.shape == (128, 128)
    inside = np.zeros_like(stored, bool)
    inside[16:48, 32:96] = True  # the ROI at half scale
    assert stored[inside].min() == 1.0 and stored[~inside].max() == 0.0


def test_a_heat_map_holds_none_of_the_frames_pixels(tmp_path: Any) -> None:
    blobs = FileBlobStore(tmp_path / "blobs")
    ref = store_heatmap(blobs, heatmap_levels(smooth_map(256, 256), (256, 256)))
    assert (ref.width, ref.height, ref.encoding) == (128, 128, "png")
    stored = cv2.imdecode(np.frombuffer(blobs.get(ref.uri), np.uint8), cv2.IMREAD_UNCHANGED)
    assert (
        stored is not None and stored.ndim == 2 and stored.dtype == np.uint8
    )  # one grey channel: scores only
    assert ref.size_bytes < 20_000


def test_something_that_is_not_a_heat_map_is_refused() -> None:
    rgb = cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))[1].tobytes()
    for data in (rgb, b"not a png"):
        with pytest.raises(ValueError, match="heat map"):
            decode_heatmap(data)


def test_an_overlay_without_its_frame_is_drawn_over_grey_with_the_boxes() -> None:
    score_map = np.zeros((60, 80), np.float32)
    score_map[20:40, 30:50] = 0.9
    overlay = render_overlay(None, score_map, [Mark((30, 20, 20, 20), "critical", 0.9)], frame_size=(60, 80))
    assert overlay.shape == (60, 80, 3)
    assert (overlay[0, 0] == NO_FRAME_GREY).all() and (overlay[55, 75] == NO_FRAME_GREY).all()
    assert tuple(overlay[30, 30]) == (255, 0, 0)  # the box's edge, critical = red
    assert not (overlay[30, 40] == NO_FRAME_GREY).all()  # warm inside
    with pytest.raises(ValueError, match="frame or its size"):
        render_overlay(None, score_map, [])


# ------------------------------------------------------------------------------ detect, finish


def _frames(blobs: FileBlobStore, count: int) -> tuple[list[Frame], list[np.ndarray]]:
    parts = list(SyntheticLine(seed=4).parts(count))
    frames = []
    for i, part in enumerate(parts):
        ref = blobs.put(encode_frame(part.image), "png", part.image.shape[1], part.image.shape[0])
        frames.append(
            Frame(
                frame_id=replay_frame_id(part.captured_at, f"test:{i}"),
                line_id=part.line_id,
                station_id=part.station_id,
                camera_id=part.camera_id,
                recipe=part.recipe,
                captured_at=part.captured_at,
                image=ref,
            )
        )
    return frames, [part.image for part in parts]


def test_detect_hands_back_the_heat_maps_of_the_models_maps_and_finish_stores_them(
    inspector: Inspector, tmp_path: Any
) -> None:
    blobs = FileBlobStore(tmp_path / "blobs")
    frames, images = _frames(blobs, 8)
    detected = detect_batch(inspector, images)
    full = inspector.predict(images)
    records = finish_batch(frames, detected, blobs)
    assert set(detected.timings_ms) == {"preprocess", "infer"}
    assert (detected.model_name, detected.model_version) == (inspector.card.name, inspector.card.version)
    for record, ours, theirs, image, frame in zip(
        records, detected.predictions, full, images, frames, strict=True
    ):
        assert ours.anomaly_map.size == 0  # the heat map stands in for it
        assert (record.verdict, record.score_raw) == (theirs.verdict, theirs.score_raw)
        expected = heatmap_levels(theirs.anomaly_map, image.shape[:2], inspector.card.roi)
        assert record.heatmap is not None
        np.testing.assert_allclose(decode_heatmap(blobs.get(record.heatmap.uri)), expected / 255.0, atol=1e-6)
        assert record.image == frame.image and record.model_name == inspector.card.name


def test_defects_and_heat_maps_are_measured_in_the_frames_own_pixels(inspector: Inspector) -> None:
    """A very large JPEG is decoded at a reduced size: its defects are still given in its own pixels."""
    image, _, _ = render_part(np.random.default_rng(0), ["sink_mark"])
    height, width = image.shape[:2]
    small = detect_batch(inspector, [image])
    large = detect_batch(inspector, [image], [(height * 4, width * 4)])
    (a,), (b,) = small.predictions, large.predictions
    assert a.defects and len(a.defects) == len(b.defects)
    for ours, big in zip(a.defects, b.defects, strict=True):
        x, y, w, h = ours.bbox
        bx, by, bw, bh = big.bbox
        assert abs(bx - 4 * x) <= 4 and abs(by - 4 * y) <= 4 and abs(bw - 4 * w) <= 8 and abs(bh - 4 * h) <= 8
    assert large.heatmaps[0].shape == small.heatmaps[0].shape  # the heat map's side is capped
