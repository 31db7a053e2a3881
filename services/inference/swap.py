"""An inference port whose models can be replaced while the line runs, losing and repeating no frame.

:meth:`SwappablePort.swap` starts the new port beside the old one (models loaded, workers warm),
then sends every batch that starts from then on to the new port, waits for the batches still being
scored by the old one, and closes it. A batch is scored by exactly one port, old or new, so a swap
drops no frame and scores none twice; the records say which model scored each frame. Memory holds
both ports for the length of the switch.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from services.inference.ports import InferencePort, WrappedPort
from services.steps.detect import Detected

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Swap:
    """One swap: the models before and after, how long the new ones took to load and start, and the
    switch-over (from the new port being ready to the old one having finished its last batch)."""

    before: dict[str, str]
    after: dict[str, str]
    load_s: float
    switch_s: float


class SwappablePort(WrappedPort):
    """Wraps a port (:attr:`port`, the current one) that :meth:`swap` replaces."""

    def __init__(self, port: InferencePort) -> None:
        super().__init__(port)
        self._in_flight: dict[int, int] = {}  # id(port) -> batches it is scoring
        self._drained: dict[int, asyncio.Event] = {}
        self._swapping = asyncio.Lock()
        self.swaps: list[Swap] = []

    async def start(self) -> None:
        await self.port.start()

    async def detect(
        self, recipe: str, images: Sequence[np.ndarray], sizes: Sequence[tuple[int, int]]
    ) -> Detected:
        port = self.port  # the batch stays with the port it started on
        key = id(port)
        self._in_flight[key] = self._in_flight.get(key, 0) + 1
        try:
            return await port.detect(recipe, images, sizes)
        finally:
            self._in_flight[key] -= 1
            if not self._in_flight[key] and key in self._drained:
                self._drained[key].set()

    async def swap(self, new: InferencePort) -> float:
        """Start ``new``, route every batch from now on to it, let the old port finish its batches
        and close it; returns the switch-over time in seconds (from the new port being ready to the
        old one being empty). If ``new`` fails to start, the old port keeps serving and the error
        goes up."""
        async with self._swapping:
            loading = time.perf_counter()
            old, before = self.port, self.port.models
            try:
                await new.start()
                if new.recipes != old.recipes:
                    raise ValueError(
                        f"the new models serve {sorted(new.recipes)}, the running ones {sorted(old.recipes)}:"
                        " a swap must keep every recipe served"
                    )
            except BaseException:  # (cancelled too: the line stopping) the old port keeps serving
                await asyncio.shield(new.close())
                raise
            ready = time.perf_counter()
            drained = asyncio.Event()
            self._drained[id(old)] = drained
            self.port = new  # from here on every batch goes to the new port
            if not self._in_flight.get(id(old)):
                drained.set()
            # shielded: the old port is let go of even when the caller is cancelled meanwhile
            switch_s = await asyncio.shield(self._retire(old, drained, ready))
            self.swaps.append(Swap(before, new.models, ready - loading, switch_s))
            log.info(
                "models %s replaced by %s: loaded in %.1f s, switched in %.3f s",
                before,
                new.models,
                ready - loading,
                switch_s,
            )
            return switch_s

    async def _retire(self, old: InferencePort, drained: asyncio.Event, ready: float) -> float:
        await drained.wait()
        switch_s = time.perf_counter() - ready
        del self._drained[id(old)]
        self._in_flight.pop(id(old), None)
        await old.close()
        return switch_s

    async def close(self) -> None:
        async with self._swapping:
            await self.port.close()
