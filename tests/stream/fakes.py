"""Test doubles for the runtime: a frame source over a list, and a detector stand-in."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest

from schemas.dead_letter import DeadLetter
from schemas.frame import Frame
from schemas.inspection import Inspection
from schemas.process import ProcessSnapshot
from services.ingest.frame_ids import replay_frame_id
from services.ingest.ports import CapturedFrame
from services.stream import runtime
from services.stream.steps import Detected
from services.vision.inspector import Prediction

T0 = datetime(2025, 3, 4, 8, 0, 0, tzinfo=UTC)


def captured(
    index: int,
    *,
    camera_id: str = "cam-1",
    recipe: str = "housing-A",
    captured_at: datetime | None = None,
    data: bytes | None = None,
    image: np.ndarray | None = None,
) -> CapturedFrame:
    """Frame ``index`` of a test line, one a second from T0; a small grey image unless given."""
    at = captured_at or T0 + timedelta(seconds=index)
    if data is None and image is None:
        image = np.full((32, 32, 3), index % 256, dtype=np.uint8)
    return CapturedFrame(
        frame_id=replay_frame_id(at, f"test:{index}"),
        line_id="line-1",
        station_id="station-1",
        camera_id=camera_id,
        recipe=recipe,
        captured_at=at,
        source_ref=f"test:{index}",
        part_id=f"part-{index:04d}",
        data=data,
        image=image,
    )


class ListSource:
    """Yields the given items; counts how many were read."""

    def __init__(self, items: Sequence[CapturedFrame | DeadLetter]) -> None:
        self.items, self.reads, self.closed = list(items), 0, False
        self.name = "list"

    def frames(self) -> Iterator[CapturedFrame | DeadLetter]:
        for item in self.items:
            self.reads += 1
            yield item

    def close(self) -> None:
        self.closed = True


class FakeDetector:
    """Stands in for the detector steps (``detect_batch``, ``finish_batch``): every frame is OK.

    ``gate`` (when given) holds each batch in detection, ``finish_gate`` each batch in finishing;
    ``install`` puts the fake into the runtime.
    """

    def __init__(
        self, gate: threading.Event | None = None, finish_gate: threading.Event | None = None
    ) -> None:
        self.gate, self.entered = gate, threading.Event()
        self.finish_gate, self.finishing = finish_gate, threading.Event()
        self.batches: list[int] = []
        self.finished: list[int] = []

    def install(self, monkeypatch: pytest.MonkeyPatch) -> FakeDetector:
        monkeypatch.setattr(runtime, "detect_batch", self.detect)
        monkeypatch.setattr(runtime, "finish_batch", self.finish)
        return self

    def detect(self, inspector: Any, images: Sequence[np.ndarray]) -> Detected:
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(timeout=30)
        self.batches.append(len(images))
        prediction = Prediction(0.0, 0.1, "OK", np.zeros((1, 1), np.float32), [], np.zeros(0, np.float32))
        return Detected([prediction] * len(images), {"preprocess": 0.5, "infer": 1.0})

    def finish(
        self,
        inspector: Any,
        frames: Sequence[Frame],
        images: Sequence[np.ndarray],
        detected: Detected,
        blobs: Any,
        process: Sequence[ProcessSnapshot] | None = None,
        *,
        timings_ms: Sequence[Mapping[str, float]] | None = None,
    ) -> list[Inspection]:
        self.finishing.set()
        if self.finish_gate is not None:
            self.finish_gate.wait(timeout=30)
        self.finished.append(len(frames))
        snapshots = process or [ProcessSnapshot(status="missing")] * len(frames)
        return [
            Inspection(
                frame_id=f.frame_id,
                line_id=f.line_id,
                station_id=f.station_id,
                camera_id=f.camera_id,
                part_id=f.part_id,
                recipe=f.recipe,
                captured_at=f.captured_at,
                model_name="fake",
                model_version="1",
                score_raw=0.0,
                score=0.1,
                verdict="OK",
                process=snapshot,
                timings_ms={**(timings_ms[i] if timings_ms else {}), **detected.timings_ms},
                inspected_at=datetime.now(UTC),
            )
            for i, (f, snapshot) in enumerate(zip(frames, snapshots, strict=True))
        ]
