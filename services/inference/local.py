"""``local://``: detectors as threads of this process, each with a torch thread team of its own.

Two small thread teams keep the cores busier than one large one: each runs its serial parts
(Python, kNN, defects) while the other computes, and the caller's own work interrupts a team of one
thread less than one of all threads. Each detector is one long-lived thread (one warm OpenMP team)
that sets its own torch thread count: OpenMP keeps the count per calling thread, so a fresh thread
would not have the caller's.

URL parameters: ``detectors`` (default two, one when torch has one thread) and ``threads`` (torch
threads per detector, default the caller's divided among the detectors).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from services.inference.ports import InferenceError, describe_models
from services.steps.detect import Detected, detect_batch
from services.vision.inspector import Inspector


def detector_plan(detectors: int | None, threads: int | None, torch_threads: int) -> tuple[int, int]:
    """How many detectors run, and how many torch threads each of them uses."""
    if (detectors is not None and detectors < 1) or (threads is not None and threads < 1):
        raise ValueError(f"detectors and threads must be at least 1, got {detectors}, {threads}")
    count = detectors or min(2, max(1, torch_threads))
    return count, threads or max(1, torch_threads // count)


def set_torch_threads(threads: int) -> None:
    """Give the calling thread ``threads`` torch threads, whatever the default is set to later."""
    torch.get_num_threads()  # torch sets a thread's count to the default on its first use: do that now
    torch.set_num_threads(threads)


class TokenPool:
    """Which of an adapter's slots is free; a detect call holds one while its batch is scored.

    Made in :meth:`start` of its adapter, so that its queue belongs to the loop that uses it."""

    def __init__(self, tokens: Sequence[int]) -> None:
        self._free: asyncio.Queue[int] = asyncio.Queue()
        for token in tokens:
            self._free.put_nowait(token)

    async def take(self) -> int:
        return await self._free.get()

    def give_back(self, token: int) -> None:
        self._free.put_nowait(token)


class InProcessModels:
    """What an adapter over inspectors loaded in this process says it serves (url, recipes, models)."""

    def __init__(self, inspectors: Mapping[str, Inspector], url: str) -> None:
        self.inspectors, self._url = dict(inspectors), url

    @property
    def url(self) -> str:
        return self._url

    @property
    def recipes(self) -> frozenset[str]:
        return frozenset(self.inspectors)

    @property
    def models(self) -> dict[str, str]:
        return describe_models(self.inspectors)


class LocalInference(InProcessModels):
    """Detector threads in this process over the given inspectors (recipe → model)."""

    def __init__(
        self,
        inspectors: Mapping[str, Inspector],
        detectors: int | None = None,
        threads: int | None = None,
        url: str = "local://",
    ) -> None:
        super().__init__(inspectors, url)
        self.detectors, self.threads = detector_plan(detectors, threads, torch.get_num_threads())
        self._executors: list[ThreadPoolExecutor] = []
        self._tokens: TokenPool | None = None

    @property
    def slots(self) -> int:
        return self.detectors

    async def start(self) -> None:
        caller_threads = torch.get_num_threads()
        self._executors = [
            ThreadPoolExecutor(1, f"linewatch-detector-{i}", set_torch_threads, (self.threads,))
            for i in range(self.detectors)
        ]
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(loop.run_in_executor(e, int) for e in self._executors))
        torch.set_num_threads(caller_threads)  # (setting it in a detector thread set the default too)
        self._tokens = TokenPool(range(self.detectors))

    async def detect(
        self, recipe: str, images: Sequence[np.ndarray], sizes: Sequence[tuple[int, int]]
    ) -> Detected:
        inspector = self.inspectors[recipe]
        if self._tokens is None:
            raise InferenceError(f"{self.url} is not started")
        token = await self._tokens.take()
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(
                self._executors[token], detect_batch, inspector, list(images), list(sizes)
            )
        except Exception as err:  # the model failed on this batch: the next one is tried afresh
            raise InferenceError(f"{type(err).__name__}: {err}") from err
        finally:
            self._tokens.give_back(token)

    async def close(self) -> None:
        for executor in self._executors:
            executor.shutdown(wait=False, cancel_futures=True)
        self._executors, self._tokens = [], None
