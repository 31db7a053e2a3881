"""Heat maps: the anomaly map alone, small and frame-aligned; overlays drawn from it; split steps."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import pytest

from schemas.frame import Frame
from services.ingest.frame_ids import replay_frame_id
from services.ingest.synthetic import SyntheticLine
from services.storage.file_blob_store import FileBlobStore
from services.stream.steps import detect_batch, encode_frame, finish_batch, inspect_batch, store_heatmap
from services.vision.inspector import Inspector, Prediction
from services.vision.overlay import (
    HEATMAP_MAX_SIDE,
    NO_FRAME_GREY,
    Mark,
    decode_heatmap,
    encode_heatmap,
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
    prediction = Prediction(0.0, 0.1, "OK", smooth_map(256, 256), [], np.zeros(4, np.float32))
    ref = store_heatmap(blobs, prediction, (256, 256), None)
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


# --------------------------------------------------------------------- detect + finish = inspect


def test_detect_then_finish_is_inspect_batch(inspector: Inspector, tmp_path: Any) -> None:
    parts = list(SyntheticLine(seed=4).parts(8))
    blobs = FileBlobStore(tmp_path / "blobs")
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
    images = [part.image for part in parts]
    whole = inspect_batch(inspector, frames, images, blobs)
    detected = detect_batch(inspector, images)
    split = finish_batch(inspector, frames, images, detected, blobs)
    assert set(detected.timings_ms) == {"preprocess", "infer"}
    for a, b, frame in zip(whole, split, frames, strict=True):
        assert (a.verdict, a.score, a.defects, a.embedding) == (b.verdict, b.score, b.defects, b.embedding)
        assert a.heatmap == b.heatmap and a.heatmap is not None
        assert a.image == b.image == frame.image
