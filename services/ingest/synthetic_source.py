"""Frames from the synthetic moulding line (:class:`services.ingest.synthetic.SyntheticLine`).

The line is deterministic given its seed and start, and a part's frame id is derived from its
capture time and part id, so running the same line again (after a crash) re-inspects the same
frames under the same ids. ``realtime`` holds each part back until the clock reaches its capture
time (a live demo, with ``start`` near now); otherwise parts come as fast as they are read.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from schemas.dead_letter import DeadLetter
from services.ingest.frame_ids import replay_frame_id
from services.ingest.ports import CapturedFrame
from services.ingest.synthetic import SyntheticLine, SyntheticPart


class SyntheticSource:
    """The parts of ``SyntheticLine(seed, **line_options)``: ``parts`` of them, or forever if None."""

    def __init__(
        self, seed: int = 0, parts: int | None = None, realtime: bool = False, **line_options: Any
    ) -> None:
        self.line = SyntheticLine(seed=seed, **line_options)
        self.seed, self.parts, self.realtime = seed, parts, realtime
        self.name = f"synthetic:{self.line.line_id}?seed={seed}"

    def frames(self) -> Iterator[CapturedFrame | DeadLetter]:
        for part in self.line.parts(self.parts):
            if self.realtime:
                wait_s = (part.captured_at - datetime.now(UTC)).total_seconds()
                if wait_s > 0:
                    time.sleep(wait_s)
            yield captured_part(part, self.seed)

    def close(self) -> None:
        pass


def captured_part(part: SyntheticPart, seed: int) -> CapturedFrame:
    """The frame of one synthetic part, with an id that is the same on every run of the line."""
    return CapturedFrame(
        frame_id=replay_frame_id(part.captured_at, f"synthetic:{seed}:{part.line_id}:{part.part_id}"),
        line_id=part.line_id,
        station_id=part.station_id,
        camera_id=part.camera_id,
        recipe=part.recipe,
        captured_at=part.captured_at,
        source_ref=f"synthetic:{part.line_id}/{part.part_id}",
        part_id=part.part_id,
        image=part.image,
    )
