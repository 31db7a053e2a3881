"""The step functions on their own: decode, probe, defects, the inspection record."""

from __future__ import annotations

import io
from datetime import UTC, datetime

import cv2
import numpy as np
import pytest
from PIL import Image

from schemas.blob import BlobRef
from schemas.dead_letter import DeadLetter, reason_code, reject
from schemas.frame import Frame
from services.ingest.frame_ids import replay_frame_id
from services.steps.admit import decode, encode_frame, png_size, probe_image
from services.steps.finish import to_defect
from services.vision.defects import DefectRegion

T0 = datetime(2025, 3, 4, 8, 0, 0, tzinfo=UTC)


def frame() -> Frame:
    blob = BlobRef(uri="file:///b/f.png", sha256="a" * 64, size_bytes=10, width=64, height=48, encoding="png")
    return Frame(
        frame_id=replay_frame_id(T0, "f"),
        line_id="line-1",
        station_id="station-1",
        camera_id="cam-1",
        recipe="housing-A",
        captured_at=T0,
        image=blob,
    )


def image(height: int = 48, width: int = 64) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_decode_round_trips_an_encoded_frame() -> None:
    original = image()
    decoded = decode(frame(), encode_frame(original))
    assert isinstance(decoded, np.ndarray)
    np.testing.assert_array_equal(decoded, original)


@pytest.mark.parametrize("data", [b"", b"not an image at all", encode_frame(image())[:200]])
def test_decode_turns_bad_bytes_into_a_dead_letter(data: bytes) -> None:
    letter = decode(frame(), data)
    assert isinstance(letter, DeadLetter)
    assert letter.source == "decode"
    assert reason_code(letter) == "undecodable"
    assert letter.frame_id == frame().frame_id
    assert letter.original_ref == "file:///b/f.png"


def test_decode_refuses_a_frame_above_the_pixel_limit_as_oversized() -> None:
    letter = decode(frame(), encode_frame(image(600, 600)), max_megapixels=0.1)
    assert isinstance(letter, DeadLetter)
    assert reason_code(letter) == "oversized"


def test_probe_reads_format_and_size_from_the_header() -> None:
    assert probe_image(encode_frame(image(48, 64))) == ("png", 64, 48)
    ok, jpeg = cv2.imencode(".jpg", image(30, 50))
    assert ok and probe_image(jpeg.tobytes()) == ("jpeg", 50, 30)


def test_the_png_fast_path_reads_what_pillow_reads() -> None:
    data = encode_frame(image(37, 91))
    assert png_size(data) == (91, 37)
    with Image.open(io.BytesIO(data)) as pillow:
        assert pillow.size == (91, 37)
    assert png_size(data[:20]) is None  # cut off in the header: Pillow gets to say why
    assert png_size(data[:12] + b"IDAT" + data[16:]) is None  # no IHDR first: not a PNG it can trust
    zero_width = data[:16] + (0).to_bytes(4, "big") + data[20:]
    assert png_size(zero_width) is None and isinstance(probe_image(zero_width), str)


@pytest.mark.parametrize("data", [b"", b"\x89PNG\r\n\x1a\n garbage", b"GIF89a" + b"\0" * 20])
def test_probe_says_why_it_cannot_read_a_header(data: bytes) -> None:
    assert isinstance(probe_image(data), str)


def test_to_defect_keeps_the_region_measurements() -> None:
    region = DefectRegion(
        bbox=(10, 20, 30, 40),
        area_px=900,
        area_share=0.01,
        max_score=0.9,
        mean_score=0.7,
        centroid=(25.0, 40.0),
        location="top_left",
        severity="major",
    )
    defect = to_defect(region)
    assert (defect.bbox.x, defect.bbox.y, defect.bbox.width, defect.bbox.height) == (10, 20, 30, 40)
    assert (defect.area_px, defect.location, defect.severity) == (900, "top_left", "major")
    assert (defect.centroid.x, defect.centroid.y) == (25.0, 40.0)
    assert (defect.max_score, defect.mean_score) == (0.9, 0.7)


def test_reject_reason_reads_code_then_detail() -> None:
    letter = reject("ingest", "unknown_camera", "camera 'x' is not one of a, b", "src")
    assert letter.reason == "unknown_camera: camera 'x' is not one of a, b"
    assert reason_code(letter) == "unknown_camera"
