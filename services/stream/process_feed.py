"""Feeding process samples into the history just far enough for the next frame to be joined.

Before a frame taken at ``t`` is joined, every process source is read until it has delivered a
sample after ``t`` (or ended): then no sample at or before ``t`` can still be on its way, and the
join is exact. Sources are read in a worker thread; unreadable samples become dead letters.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator, Sequence
from datetime import datetime

from schemas.dead_letter import DeadLetter
from schemas.process import ProcessSample
from services.ingest.ports import ProcessSource
from services.steps.join import ProcessHistory

log = logging.getLogger(__name__)


class _Feed:
    def __init__(self, source: ProcessSource) -> None:
        self.source = source
        self.samples: Iterator[ProcessSample | DeadLetter] = iter(source.samples())
        self.last_ts: datetime | None = None
        self.ended = False


class ProcessFeed:
    """Reads ``sources`` into ``history``; ``on_dead_letter`` receives what could not be used."""

    def __init__(
        self,
        sources: Sequence[ProcessSource],
        history: ProcessHistory,
        on_dead_letter: Callable[[DeadLetter], Awaitable[None]],
        on_sample: Callable[[], None] = lambda: None,
    ) -> None:
        self.history = history
        self._feeds = [_Feed(source) for source in sources]
        self._on_dead_letter, self._on_sample = on_dead_letter, on_sample

    async def advance_to(self, t: datetime) -> None:
        """Read each source until it is past ``t`` (at most ``history.max_samples`` samples per call)."""
        for feed in self._feeds:
            for _ in range(self.history.max_samples):
                if feed.ended or (feed.last_ts is not None and feed.last_ts > t):
                    break
                await self._pull(feed)
            else:
                log.warning(
                    "process source %s is far behind the frames (at %s)", feed.source.name, feed.last_ts
                )

    async def _pull(self, feed: _Feed) -> None:
        try:
            item = await asyncio.to_thread(next, feed.samples, None)
        except Exception:  # a broken source ends; frames are joined with what the others give
            log.exception("process source %s failed and is closed", feed.source.name)
            item = None
        if item is None:
            feed.ended = True
        elif isinstance(item, DeadLetter):
            await self._on_dead_letter(item)
        else:
            refused = self.history.add(item)
            if refused is not None:  # a sample from the future says nothing about how far the source is
                await self._on_dead_letter(refused)
            else:
                feed.last_ts = item.ts
                self._on_sample()

    def close(self) -> None:
        for feed in self._feeds:
            feed.source.close()
