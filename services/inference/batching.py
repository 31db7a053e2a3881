"""Micro-batching: concurrent callers of an inference port share its batches.

The API scores each upload as it comes and a Faust worker runs several frames at once (agent
concurrency); alone, each would be a batch of one. :class:`MicroBatcher` sits in front of any port:
while the port has a free slot, a request goes at once (no added latency when the line is quiet);
while every slot is busy, requests of the same recipe queue up and go together, up to
``max_batch`` frames, the moment a slot frees. Under load the batches grow by themselves, which is
what makes a detector's throughput (Triton's dynamic batcher does the same on the server).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from services.inference.ports import InferenceError, InferencePort, InferenceUnavailable, WrappedPort
from services.steps.detect import Detected


@dataclass
class Waiting:
    images: list[np.ndarray]
    sizes: list[tuple[int, int]]
    answer: asyncio.Future[Detected] = field(repr=False)


def split(detected: Detected, counts: Sequence[int]) -> list[Detected]:
    """One batch's answer cut back into its callers' parts (each with the batch's timings)."""
    out, at = [], 0
    for n in counts:
        out.append(
            Detected(
                detected.predictions[at : at + n],
                detected.heatmaps[at : at + n],
                dict(detected.timings_ms),
                detected.model_name,
                detected.model_version,
                detected.cameras,
            )
        )
        at += n
    return out


class MicroBatcher(WrappedPort):
    """An inference port whose concurrent :meth:`detect` calls share the wrapped port's batches."""

    def __init__(self, port: InferencePort, max_batch: int = 8) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        super().__init__(port)
        self.max_batch = max_batch
        self._waiting: dict[str, list[Waiting]] = {}
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self.batches = 0  # batches sent to the port, and the frames in them (for benchmarks)
        self.frames = 0

    @property
    def slots(self) -> int:
        """Requests in flight that keep the port busy with full batches."""
        return self.port.slots * self.max_batch

    async def start(self) -> None:
        await self.port.start()

    async def detect(
        self, recipe: str, images: Sequence[np.ndarray], sizes: Sequence[tuple[int, int]]
    ) -> Detected:
        if recipe not in self.port.recipes:
            raise KeyError(recipe)
        answer: asyncio.Future[Detected] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(recipe, []).append(Waiting(list(images), list(sizes), answer))
        self._dispatch()
        return await answer

    def _dispatch(self) -> None:
        """Send what waits, a batch per free slot, the recipe that waited longest first."""
        while self._in_flight < self.port.slots and self._waiting:
            recipe = next(iter(self._waiting))
            queue = self._waiting[recipe]
            taken: list[Waiting] = []
            frames = 0
            while queue and (not taken or frames + len(queue[0].images) <= self.max_batch):
                item = queue.pop(0)
                taken.append(item)
                frames += len(item.images)
            if not queue:
                del self._waiting[recipe]
            self._in_flight += 1
            task = asyncio.get_running_loop().create_task(self._score(recipe, taken))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _score(self, recipe: str, taken: list[Waiting]) -> None:
        try:
            images = [image for item in taken for image in item.images]
            sizes = [size for item in taken for size in item.sizes]
            self.batches, self.frames = self.batches + 1, self.frames + len(images)
            try:
                detected = await self.port.detect(recipe, images, sizes)
            except InferenceError as err:
                if len(taken) > 1 and not isinstance(err, InferenceUnavailable):
                    await self._score_alone(recipe, taken)  # one caller's bad frame fails only it
                    return
                for item in taken:
                    if not item.answer.done():
                        item.answer.set_exception(err)
                return
            except BaseException as err:  # every caller of the batch hears of it
                for item in taken:
                    if not item.answer.done():
                        item.answer.set_exception(err)
                if not isinstance(err, Exception):
                    raise
                return
            for item, part in zip(taken, split(detected, [len(i.images) for i in taken]), strict=True):
                if not item.answer.done():
                    item.answer.set_result(part)
        finally:
            self._in_flight -= 1
            self._dispatch()

    async def _score_alone(self, recipe: str, taken: list[Waiting]) -> None:
        for item in taken:
            try:
                item.answer.set_result(await self.port.detect(recipe, item.images, item.sizes))
            except Exception as err:
                item.answer.set_exception(err)

    async def close(self) -> None:
        for queue in self._waiting.values():
            for item in queue:
                if not item.answer.done():
                    item.answer.cancel()
        self._waiting.clear()
        await self.port.close()
