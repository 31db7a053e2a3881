"""What a run of the line did: frames, verdicts, dead letters, throughput and latency."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

LATENCY_WINDOW = 100_000
"""Latency percentiles are taken over the last this many records (read off the source to stored)."""


@dataclass
class LineSummary:
    frames_in: int = 0  # frames read off the sources (dead-lettered ones included)
    inspected: int = 0  # inspection records stored
    ng: int = 0
    skipped: int = 0  # frames already stored, skipped when resuming
    frame_dead_letters: int = 0
    process_samples: int = 0
    dead_letters: dict[str, int] = field(default_factory=dict)  # reason code → count (frames and process)
    wall_s: float = 0.0  # from the first frame read (the detectors ready) to the last record stored
    startup_s: float = 0.0  # starting the detectors (worker processes load their models), before wall_s
    latencies_ms: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW), repr=False)
    stopped_by: str | None = None  # why the line stopped on its own (e.g. the blob store is full)
    # dead letters in the record store at the end, from every writer (the line, API uploads, earlier
    # runs); None when not counted
    stored_dead_letters: int | None = None
    alerts: int = 0  # alerts the drift monitors raised

    @property
    def ng_rate(self) -> float:
        return self.ng / self.inspected if self.inspected else 0.0

    @property
    def throughput(self) -> float:
        """Frames per second read and dealt with (inspected or dead-lettered)."""
        done = self.inspected + self.frame_dead_letters
        return done / self.wall_s if self.wall_s > 0 else 0.0

    def latency_ms(self, percentile: float) -> float:
        return float(np.percentile(self.latencies_ms, percentile)) if self.latencies_ms else 0.0

    def _startup(self) -> str:
        """How long the detectors took to start, when that was worth saying (worker processes)."""
        return f" (after {self.startup_s:.1f} s starting the detectors)" if self.startup_s >= 0.05 else ""

    def _stored_letters(self) -> str:
        """The record store's own count of dead letters, when it holds others than this run's line's."""
        own = sum(self.dead_letters.values())
        if self.stored_dead_letters is None or self.stored_dead_letters == own:
            return ""
        return f"; {self.stored_dead_letters} in the record store in all (API uploads, earlier runs)"

    def lines(self) -> list[str]:
        """The summary as printed by ``linewatch demo`` and ``linewatch run``."""
        reasons = ", ".join(f"{code} {n}" for code, n in sorted(self.dead_letters.items())) or "none"
        frames = f"{self.frames_in} in, {self.inspected} inspected, {self.frame_dead_letters} dead-lettered"
        if self.skipped:
            frames += f", {self.skipped} already stored"
        p50, p99 = self.latency_ms(50), self.latency_ms(99)
        out = [
            f"frames        {frames}",
            f"NG rate       {self.ng_rate:.1%} ({self.ng} NG of {self.inspected})",
            f"dead letters  {sum(self.dead_letters.values())} ({reasons}){self._stored_letters()}",
            f"throughput    {self.throughput:.1f} frames/s over {self.wall_s:.1f} s{self._startup()}",
            f"latency       p50 {p50:.0f} ms, p99 {p99:.0f} ms (read off the source to stored)",
        ]
        if self.alerts:
            out.append(f"alerts        {self.alerts} raised (GET /v1/alerts, the dashboard)")
        if self.stopped_by:
            out.append(f"stopped       {self.stopped_by}")
        return out
