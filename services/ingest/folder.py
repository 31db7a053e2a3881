"""Frames from a folder of image files, in name order, replayed at a given rate (optionally looped).

A file's capture time is its modification time and its frame id is derived from that time and its
path, so replaying a folder (again, or after a crash) re-inspects the same frames under the same
ids: records are upserted, never duplicated.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from schemas.dead_letter import DeadLetter, reject
from services.ingest.frame_ids import replay_frame_id
from services.ingest.pacing import Pacer
from services.ingest.ports import CapturedFrame, FrameContext
from services.vision.images import IMAGE_SUFFIXES


def list_images(root: Path) -> list[Path]:
    """Image files under ``root`` (recursively), sorted by their path."""
    if not root.is_dir():
        raise FileNotFoundError(f"frame folder {root} does not exist or is not a directory")
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


class FolderSource:
    def __init__(
        self, root: Path, context: FrameContext, rate_hz: float | None = None, loop: bool = False
    ) -> None:
        self.root, self.context, self.rate_hz, self.loop = root, context, rate_hz, loop
        self.name = f"folder:{root}"

    def frames(self) -> Iterator[CapturedFrame | DeadLetter]:
        pacer = Pacer(self.rate_hz)
        while True:
            paths = list_images(self.root)
            for path in paths:
                pacer.wait()
                yield self._read(path)
            if not self.loop or not paths:
                return

    def _read(self, path: Path) -> CapturedFrame | DeadLetter:
        try:
            captured_at = datetime.fromtimestamp(path.stat().st_mtime, UTC)
            data = path.read_bytes()
        except OSError as err:
            return reject("ingest", "unreadable_file", str(err.strerror or err), str(path))
        ctx = self.context
        return CapturedFrame(
            frame_id=replay_frame_id(captured_at, str(path.relative_to(self.root))),
            line_id=ctx.line_id,
            station_id=ctx.station_id,
            camera_id=ctx.camera_id,
            recipe=ctx.recipe,
            captured_at=captured_at,
            source_ref=str(path),
            data=data,
        )

    def close(self) -> None:
        pass
