"""``process://``: each detector in a worker process of its own (see ``detector_process.py``).

The caller's Python then no longer stalls inference: each worker has its own GIL. Each worker
holds a copy of the models and takes seconds to start; it is kept ``IN_FLIGHT`` batches, so that it
starts on the next the moment it sends one back. URL parameters: ``detectors`` and ``threads`` as
for ``local://``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from services.inference.detector_process import IN_FLIGHT, DetectorProcess
from services.inference.local import InProcessModels, TokenPool, detector_plan
from services.inference.ports import InferenceError
from services.steps.detect import Detected
from services.vision.inspector import Inspector


class ProcessInference(InProcessModels):
    """Detector worker processes over the given inspectors (recipe → model)."""

    def __init__(
        self,
        inspectors: Mapping[str, Inspector],
        detectors: int | None = None,
        threads: int | None = None,
        warm_batch: int = 1,
        url: str = "process://",
    ) -> None:
        super().__init__(inspectors, url)
        count, per_worker = detector_plan(detectors, threads, torch.get_num_threads())
        self.workers = [
            DetectorProcess(self.inspectors, per_worker, f"linewatch-detector-{i}", warm_batch)
            for i in range(count)
        ]
        self._waiters: ThreadPoolExecutor | None = None  # one thread per batch in flight, waiting on a pipe
        self._tokens: TokenPool | None = None

    @property
    def slots(self) -> int:
        return len(self.workers) * IN_FLIGHT

    async def start(self) -> None:
        """Start every worker side by side; raises DetectorProcessError when one cannot start."""
        self._waiters = ThreadPoolExecutor(self.slots, "linewatch-detector-wait")
        try:
            await asyncio.gather(*(asyncio.to_thread(worker.start) for worker in self.workers))
        except BaseException:
            await self.close()
            raise
        # the workers' slots interleaved, so that batches spread over the workers
        self._tokens = TokenPool([i for _ in range(IN_FLIGHT) for i in range(len(self.workers))])

    async def detect(
        self, recipe: str, images: Sequence[np.ndarray], sizes: Sequence[tuple[int, int]]
    ) -> Detected:
        if recipe not in self.inspectors:
            raise KeyError(recipe)
        if self._tokens is None or self._waiters is None:
            raise InferenceError(f"{self.url} is not started")
        token = await self._tokens.take()
        try:
            loop = asyncio.get_running_loop()
            worker = self.workers[token]
            return await loop.run_in_executor(self._waiters, worker.detect, recipe, list(images), list(sizes))
        finally:
            self._tokens.give_back(token)

    async def close(self) -> None:
        """Stop the workers (side by side: each finishes the batches sent to it first)."""
        self._tokens = None
        for worker in self.workers:
            worker.ask_to_stop()
        await asyncio.gather(*(asyncio.to_thread(worker.close) for worker in self.workers))
        if self._waiters is not None:
            self._waiters.shutdown(wait=False, cancel_futures=True)
            self._waiters = None
