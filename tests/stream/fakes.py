"""Test doubles for the runtime: a frame source over a list, and a detector stand-in."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest

from schemas.dead_letter import DeadLetter
from schemas.frame import Frame
from schemas.inspection import Inspection
from services.ingest.frame_ids import replay_frame_id
from services.ingest.ports import CapturedFrame
from services.steps.detect import Detected
from services.stream import runtime
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
    """Stands in for an inference port: every frame is OK (the finish step that follows is real).

    ``gate`` (when given) holds each batch in detection; ``slots`` is how many batches the line keeps
    in it at once. ``install`` also holds each batch at the finish step until ``finish_gate`` is set,
    and counts the finished frames.
    """

    url = "fake://"

    def __init__(
        self,
        gate: threading.Event | None = None,
        finish_gate: threading.Event | None = None,
        slots: int = 2,
        recipes: frozenset[str] = frozenset({"housing-A"}),
    ) -> None:
        self.gate, self.entered = gate, threading.Event()
        self.finish_gate, self.finishing = finish_gate, threading.Event()
        self.slots, self.recipes = slots, recipes
        self.models = {recipe: "fake 1" for recipe in recipes}
        self.batches: list[int] = []
        self.finished: list[int] = []
        self.starts = self.closes = 0

    async def start(self) -> None:
        self.starts += 1

    async def close(self) -> None:
        self.closes += 1

    async def detect(
        self, recipe: str, images: Sequence[np.ndarray], sizes: Sequence[tuple[int, int]]
    ) -> Detected:
        return await asyncio.to_thread(self.detect_now, recipe, images, sizes)

    def detect_now(
        self, recipe: str, images: Sequence[np.ndarray], sizes: Sequence[tuple[int, int]]
    ) -> Detected:
        if recipe not in self.recipes:
            raise KeyError(recipe)
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(timeout=30)
        self.batches.append(len(images))
        prediction = Prediction(0.0, 0.1, "OK", np.zeros((0, 0), np.float32), [], np.zeros(0, np.float32))
        heatmap = np.zeros((1, 1), np.uint8)
        n = len(images)
        return Detected([prediction] * n, [heatmap] * n, {"preprocess": 0.5, "infer": 1.0}, "fake", "1")

    def install(self, monkeypatch: pytest.MonkeyPatch) -> FakeDetector:
        real = runtime.finish_batch

        def finish(frames: Sequence[Frame], *args: Any, **kwargs: Any) -> list[Inspection]:
            self.finishing.set()
            if self.finish_gate is not None:
                self.finish_gate.wait(timeout=30)
            self.finished.append(len(frames))
            return real(frames, *args, **kwargs)

        monkeypatch.setattr(runtime, "finish_batch", finish)
        return self
