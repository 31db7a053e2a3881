"""Frames from a video file, a USB camera (by OpenCV index) or an RTSP stream, read with OpenCV.

A video file is replayed: a frame's capture time is ``start`` (default: the file's modification
time) plus its position in the video, and its frame id is derived from both, so a replay re-inspects
the same frames under the same ids. A camera or stream is live: frames are stamped with the clock
when read and get fresh ids.

Not covered by the tests (no camera on the build machine): opening a device index or an RTSP URL,
and reconnecting. A live source that stops delivering frames is reopened up to ``reconnects``
times, waiting ``reconnect_wait_s`` between tries, and then ends.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import cv2
import numpy as np

from schemas.dead_letter import DeadLetter
from schemas.ids import new_frame_id
from services.ingest.frame_ids import replay_frame_id
from services.ingest.pacing import Pacer
from services.ingest.ports import CapturedFrame, FrameContext

log = logging.getLogger(__name__)


class VideoSource:
    """``target``: a video file path, a camera index (int) or a stream URL (``rtsp://...``)."""

    def __init__(
        self,
        target: Path | int | str,
        context: FrameContext,
        rate_hz: float | None = None,
        start: datetime | None = None,
        reconnects: int = 3,
        reconnect_wait_s: float = 2.0,
    ) -> None:
        self.target, self.context, self.rate_hz = target, context, rate_hz
        self.live = not isinstance(target, Path)
        if isinstance(target, Path):
            if not target.is_file():
                raise FileNotFoundError(f"video file {target} does not exist")
            start = start or datetime.fromtimestamp(target.stat().st_mtime, UTC)
        self.start = start
        self.reconnects, self.reconnect_wait_s = reconnects, reconnect_wait_s
        self.name = f"video:{target}"
        self._capture: cv2.VideoCapture | None = None

    def _open(self) -> cv2.VideoCapture:
        capture = cv2.VideoCapture(str(self.target) if isinstance(self.target, Path) else self.target)
        if not capture.isOpened():
            capture.release()
            raise OSError(f"OpenCV cannot open {self.target}")
        return capture

    def frames(self) -> Iterator[CapturedFrame | DeadLetter]:
        pacer = Pacer(self.rate_hz)
        self._capture = self._open()
        index, failures = 0, 0
        while True:
            ok, bgr = self._capture.read()
            if not ok:
                if not self.live or failures >= self.reconnects:
                    return
                failures += 1
                log.warning("%s delivered no frame; reopening (%d/%d)", self.name, failures, self.reconnects)
                self._capture.release()
                time.sleep(self.reconnect_wait_s)
                try:
                    self._capture = self._open()
                except OSError as err:
                    log.warning("%s", err)
                continue
            failures = 0
            pacer.wait()
            yield self._frame(index, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), self._capture)
            index += 1

    def _frame(self, index: int, image: np.ndarray, capture: cv2.VideoCapture) -> CapturedFrame:
        ctx = self.context
        if self.live or self.start is None:
            captured_at, frame_id = datetime.now(UTC), new_frame_id()
        else:
            captured_at = self.start + timedelta(milliseconds=float(capture.get(cv2.CAP_PROP_POS_MSEC)))
            frame_id = replay_frame_id(captured_at, f"{self.target}#{index}")
        return CapturedFrame(
            frame_id=frame_id,
            line_id=ctx.line_id,
            station_id=ctx.station_id,
            camera_id=ctx.camera_id,
            recipe=ctx.recipe,
            captured_at=captured_at,
            source_ref=f"{self.target}#{index}",
            image=image,
        )

    def close(self) -> None:
        if self._capture is not None:
            self._capture.release()
            self._capture = None
