"""Replaying at a given rate: wait between frames so that they come ``rate_hz`` a second."""

from __future__ import annotations

import time


class Pacer:
    """``wait()`` returns at most ``rate_hz`` times a second; a rate of None never waits."""

    def __init__(self, rate_hz: float | None) -> None:
        if rate_hz is not None and rate_hz <= 0:
            raise ValueError(f"rate must be positive, got {rate_hz}")
        self.period_s = 1.0 / rate_hz if rate_hz else 0.0
        self._next = time.monotonic()

    def wait(self) -> None:
        if not self.period_s:
            return
        now = time.monotonic()
        if self._next > now:
            time.sleep(self._next - now)
        self._next = max(self._next, now) + self.period_s
