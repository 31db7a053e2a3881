"""An inference port served from an event loop of its own, so that any thread or loop can use it.

The API's requests run in their own loops (uvicorn's, or one per request under a test client),
while a port belongs to the loop it was started in (its slots are an asyncio queue, a Triton client
keeps its channel): :class:`InferenceThread` starts the port in a loop thread of its own and hands
each request's batch over to it, so concurrent requests share the port's slots.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import Future
from typing import Any, Final, TypeVar

import numpy as np

from services.inference.ports import InferencePort, WrappedPort
from services.steps.detect import Detected

T = TypeVar("T")
START_TIMEOUT_S: Final = 600.0  # worker processes import torch and load their models
CLOSE_TIMEOUT_S: Final = 60.0


class InferenceThread(WrappedPort):
    """``port`` run in a daemon thread's event loop; :meth:`detect` may be awaited from any loop."""

    def __init__(
        self, port: InferencePort, companions: Sequence[Callable[[], Coroutine[Any, Any, None]]] = ()
    ) -> None:
        super().__init__(port)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.companions = list(companions)  # run in the port's loop once it has started (registry follower)
        self._running: list[Future[None]] = []

    def start_in_thread(self) -> None:
        """Start the loop thread and the port in it; raises what the port's start raises."""
        if self._thread is not None:
            return
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name="linewatch-inference", daemon=True)
        self._thread.start()
        try:
            self._submit(self.port.start()).result(START_TIMEOUT_S)
        except BaseException:
            self.close_thread()
            raise
        self._running = [self._submit(companion()) for companion in self.companions]

    def _submit(self, coroutine: Coroutine[Any, Any, T]) -> Future[T]:
        if self._loop is None:
            coroutine.close()
            raise RuntimeError("the inference thread is not started")
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop)

    async def start(self) -> None:
        """The port's :meth:`start`, for callers that treat this as a port."""
        await asyncio.to_thread(self.start_in_thread)

    async def detect(
        self, recipe: str, images: Sequence[np.ndarray], sizes: Sequence[tuple[int, int]]
    ) -> Detected:
        return await asyncio.wrap_future(self._submit(self.port.detect(recipe, images, sizes)))

    def close_thread(self) -> None:
        """Close the port and stop the loop thread; safe to call twice."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            for running in self._running:
                running.cancel()
            self._running = []
            if thread.is_alive():
                asyncio.run_coroutine_threadsafe(self.port.close(), loop).result(CLOSE_TIMEOUT_S)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(CLOSE_TIMEOUT_S)
            loop.close()
            self._loop = self._thread = None

    async def close(self) -> None:
        await asyncio.to_thread(self.close_thread)
