"""The as-of join: the process parameters in force when a frame was taken.

:class:`ProcessHistory` keeps the most recent samples of each line (at most ``max_samples``). A
frame gets the latest sample taken at or before its capture time, never a later one and never an
interpolation: ``ok`` when that sample is at most ``max_age_s`` old at capture, ``stale`` (with the
sample's values) when it is older, ``missing`` when there is none. Timestamps further in the future
than ``skew_s`` (a machine or camera with a wrong clock) are refused as dead letters.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from schemas.dead_letter import DeadLetter, reject
from schemas.frame import Frame
from schemas.process import ProcessSample, ProcessSnapshot

DEFAULT_MAX_AGE_S = 5.0
DEFAULT_SKEW_S = 2.0
DEFAULT_MAX_SAMPLES = 10_000
DEFAULT_RETENTION_S = 600.0
"""Process history kept behind the newest sample of a line: frames are joined within seconds of
capture, so ten minutes covers any queue; the history's memory then stops growing within minutes."""
TRIM_EVERY = 256  # trim in bulk once this many samples are past the retention window


def future_timestamp(ts: datetime, now: datetime, skew_s: float) -> bool:
    """True when ``ts`` is more than ``skew_s`` seconds after ``now``."""
    return ts - now > timedelta(seconds=skew_s)


def check_capture_time(frame: Frame, now: datetime, skew_s: float = DEFAULT_SKEW_S) -> DeadLetter | None:
    """A dead letter when the frame claims to be taken in the future (beyond the clock skew allowed)."""
    if not future_timestamp(frame.captured_at, now, skew_s):
        return None
    detail = _ahead("captured_at", frame.captured_at, now, skew_s)
    return reject("ingest", "future_timestamp", detail, frame.image.uri, frame.frame_id)


def _ahead(what: str, ts: datetime, now: datetime, skew_s: float) -> str:
    ahead = (ts - now).total_seconds()
    return f"{what} {ts.isoformat()} is {ahead:.1f} s ahead of the clock (allowed skew {skew_s} s)"


@dataclass
class _LineSamples:
    times: list[datetime]
    samples: list[ProcessSample]


class ProcessHistory:
    def __init__(
        self,
        max_age_s: float = DEFAULT_MAX_AGE_S,
        skew_s: float = DEFAULT_SKEW_S,
        max_samples: int = DEFAULT_MAX_SAMPLES,
        retention_s: float = DEFAULT_RETENTION_S,
    ) -> None:
        if max_age_s < 0 or skew_s < 0 or max_samples < 1 or retention_s <= 0:
            raise ValueError("max_age_s and skew_s must be >= 0, max_samples >= 1 and retention_s > 0")
        self.max_age_s, self.skew_s, self.max_samples = max_age_s, skew_s, max_samples
        self.retention = timedelta(seconds=retention_s)
        self._lines: dict[str, _LineSamples] = {}

    def add(self, sample: ProcessSample, now: datetime | None = None) -> DeadLetter | None:
        """Keep ``sample``; a sample from the future (beyond the skew) is refused as a dead letter."""
        now = now or datetime.now(UTC)
        if future_timestamp(sample.ts, now, self.skew_s):
            detail = _ahead("sample ts", sample.ts, now, self.skew_s)
            return reject("process", "future_timestamp", detail, sample.model_dump_json())
        line = self._lines.setdefault(sample.line_id, _LineSamples([], []))
        at = bisect.bisect_right(line.times, sample.ts)
        line.times.insert(at, sample.ts)
        line.samples.insert(at, sample)
        if len(line.times) > 2 * self.max_samples:  # trim in bulk: O(1) amortised per sample
            del line.times[: -self.max_samples], line.samples[: -self.max_samples]
        # older than the retention window: dropped, but the one in force at its start is kept
        expired = bisect.bisect_left(line.times, line.times[-1] - self.retention) - 1
        if expired >= TRIM_EVERY:
            del line.times[:expired], line.samples[:expired]
        return None

    def latest_ts(self, line_id: str) -> datetime | None:
        line = self._lines.get(line_id)
        return line.times[-1] if line and line.times else None

    def snapshot(self, line_id: str, captured_at: datetime) -> ProcessSnapshot:
        """The process in force on ``line_id`` at ``captured_at``."""
        line = self._lines.get(line_id)
        if line is None:
            return ProcessSnapshot(status="missing")
        return as_of(line.times, line.samples, captured_at, self.max_age_s)


def as_of(
    times: Sequence[datetime], samples: Sequence[ProcessSample], captured_at: datetime, max_age_s: float
) -> ProcessSnapshot:
    """The as-of join over one line's samples in time order (``times`` their timestamps): the latest
    sample taken at or before ``captured_at``, ``ok`` when at most ``max_age_s`` old, else ``stale``;
    ``missing`` when there is none."""
    at = bisect.bisect_right(times, captured_at)
    if at == 0:
        return ProcessSnapshot(status="missing")
    sample = samples[at - 1]
    age_s = (captured_at - sample.ts).total_seconds()
    return ProcessSnapshot(
        status="ok" if age_s <= max_age_s else "stale",
        params=dict(sample.params),
        sample_ts=sample.ts,
        age_s=age_s,
        machine_id=sample.machine_id,
    )


def join_process(history: ProcessHistory, frame: Frame) -> ProcessSnapshot:
    """The join step: the process parameters in force on the frame's line when it was taken."""
    return history.snapshot(frame.line_id, frame.captured_at)
