"""The ingest ports: where frames and process samples come from.

A frame source yields :class:`CapturedFrame` values: what is known about a frame when it is taken
(the inputs of a :class:`schemas.frame.Frame`) and its image, either encoded bytes (an image file)
or a decoded RGB array (a video or camera frame, a rendered part); a frame it could not read comes
out as a :class:`DeadLetter`. A process source yields :class:`ProcessSample` values, or a dead
letter for input it could not read.
Sources are plain blocking iterators; the runtime reads them in a worker thread.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

import numpy as np

from schemas.dead_letter import DeadLetter
from schemas.process import ProcessSample


@dataclass(frozen=True)
class FrameContext:
    """Where a source's frames are taken: the names put on every frame it yields."""

    line_id: str = "line-1"
    station_id: str = "station-1"
    camera_id: str = "cam-1"
    recipe: str = "housing-A"


@dataclass(frozen=True, eq=False)
class CapturedFrame:
    """A frame as taken: ``data`` (an encoded image file) or ``image`` (decoded RGB uint8)."""

    frame_id: str
    line_id: str
    station_id: str
    camera_id: str
    recipe: str
    captured_at: datetime
    source_ref: str  # where the frame came from: a file path, a video position, a synthetic part
    part_id: str | None = None
    data: bytes | None = field(default=None, repr=False)
    image: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if (self.data is None) == (self.image is None):
            raise ValueError("a captured frame holds exactly one of data (encoded) or image (decoded)")


class FrameSource(Protocol):
    """Frames in capture order (a dead letter for one it could not read); ends when exhausted."""

    name: str

    def frames(self) -> Iterator[CapturedFrame | DeadLetter]: ...

    def close(self) -> None: ...


class ProcessSource(Protocol):
    """Process samples in time order; unreadable input comes out as a dead letter."""

    name: str

    def samples(self) -> Iterator[ProcessSample | DeadLetter]: ...

    def close(self) -> None: ...
