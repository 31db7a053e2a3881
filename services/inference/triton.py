"""``triton://host:8001``: the recipes' ensembles on a Triton Inference Server, over gRPC (asyncio).

Each frame goes as a request of its own to the ensemble named after its recipe (exported with
``linewatch triton export``), all of a batch at once, so that Triton's dynamic batcher scores the
frames of every worker and API client together. The answer is the same as ``local://``'s: the
ensemble runs the same step functions on the same artifact.

When the server is away:

* each request has a deadline (``timeout_s``) and is retried with back-off (``retries``) when the
  server is unreachable, overloaded or restarting; a model error (the batch itself is bad) is not
  retried;
* a circuit breaker opens after ``breaker_failures`` batches in a row failed for want of the
  server: for ``breaker_reset_s`` calls fail at once (:class:`InferenceUnavailable`), then one call
  tries the server again (half open). Callers wait and send the frames again: a worker never
  dead-letters a frame because Triton was restarting.

URL parameters: ``timeout_s`` (default 30), ``retries`` (3), ``breaker_failures`` (3),
``breaker_reset_s`` (5), ``slots`` (batches in flight, default 4: behind a micro-batcher, fewer slots
make larger batches), ``start_timeout_s`` (how long
:meth:`start` waits for the server to be ready, default 120).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from services.inference.ports import InferenceError, InferenceUnavailable
from services.inference.wire import decode_prediction
from services.steps.detect import Detected

log = logging.getLogger(__name__)

# gRPC codes that say "the server, not the request": retried, and counted by the breaker
TRANSIENT = {"UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "ABORTED", "CANCELLED", "UNKNOWN"}
WARM_SIZE = 64  # the warm-up frame's side (black): proves the ensemble answers, gives the model's name


class CircuitBreaker:
    """Closed → open after ``failures`` failures in a row → half open after ``reset_s`` (one call
    through) → closed on its success, open again on its failure."""

    def __init__(self, failures: int = 3, reset_s: float = 5.0, clock: Any = time.monotonic) -> None:
        self.failures, self.reset_s, self.clock = failures, reset_s, clock
        self.in_a_row = 0
        self.opened_at: float | None = None
        self.trial = False

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        return "half-open" if self.clock() - self.opened_at >= self.reset_s else "open"

    def allow(self) -> bool:
        """Whether a call may go to the server now (in half open, only the first)."""
        state = self.state
        if state == "closed":
            return True
        if state == "half-open" and not self.trial:
            self.trial = True
            return True
        return False

    def succeeded(self) -> None:
        self.in_a_row, self.opened_at, self.trial = 0, None, False

    def failed(self) -> None:
        self.in_a_row += 1
        if self.trial or self.in_a_row >= self.failures:
            if self.opened_at is None or self.trial:
                log.warning("Triton circuit breaker open for %.1f s", self.reset_s)
            self.opened_at, self.trial = self.clock(), False

    def retry_in_s(self) -> float:
        if self.opened_at is None:
            return 0.0
        return max(0.0, self.reset_s - (self.clock() - self.opened_at))


def status_of(err: BaseException) -> str:
    """The gRPC status name of a tritonclient error (``UNAVAILABLE``…), or ``UNKNOWN``."""
    status = getattr(err, "status", None)
    text = str(status() if callable(status) else status or "")
    return text.rsplit(".", 1)[-1] if text else "UNKNOWN"


class TritonInference:
    """The ``triton://`` adapter for the given recipes (each an ensemble on the server)."""

    def __init__(
        self,
        recipes: Iterable[str],
        url: str,
        timeout_s: float = 30.0,
        retries: int = 3,
        breaker_failures: int = 3,
        breaker_reset_s: float = 5.0,
        slots: int = 4,
        start_timeout_s: float = 120.0,
    ) -> None:
        parts = urlsplit(url)
        if not parts.hostname:
            raise ValueError(f"{url!r}: expected triton://HOST:PORT (gRPC, usually port 8001)")
        self.address = f"{parts.hostname}:{parts.port or 8001}"
        self._url, self._recipes = url, frozenset(recipes)
        if not self._recipes:
            raise ValueError(f"{url}: no recipes to serve (the settings' models name them)")
        if timeout_s <= 0 or retries < 0 or slots < 1 or start_timeout_s < 0:
            raise ValueError(f"{url!r}: timeout_s and slots must be positive, retries at least 0")
        self.timeout_s, self.retries, self.start_timeout_s = timeout_s, retries, start_timeout_s
        self.breaker = CircuitBreaker(breaker_failures, breaker_reset_s)
        self._slots = slots
        self._models: dict[str, str] = {}
        self._client: Any = None
        self._gate: asyncio.Semaphore | None = None

    @property
    def url(self) -> str:
        return self._url

    @property
    def recipes(self) -> frozenset[str]:
        return self._recipes

    @property
    def models(self) -> dict[str, str]:
        return dict(self._models) or {recipe: "(on Triton, not yet asked)" for recipe in self._recipes}

    @property
    def slots(self) -> int:
        return self._slots

    async def start(self) -> None:
        """Wait for the server (up to ``start_timeout_s``), check each recipe's ensemble is ready
        and answers a warm-up frame; raises InferenceError naming what is missing."""
        import tritonclient.grpc.aio as grpcclient

        self._client = grpcclient.InferenceServerClient(self.address)
        self._gate = asyncio.Semaphore(self._slots)
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            try:
                if await self._client.is_server_ready(client_timeout=5):
                    break
            except Exception as err:  # not up yet
                last = err
            else:
                last = RuntimeError("not ready")
            if time.monotonic() > deadline:
                await self.close()
                raise InferenceUnavailable(f"Triton at {self.address} is not ready: {last}")
            await asyncio.sleep(0.5)
        missing = [r for r in sorted(self._recipes) if not await self._client.is_model_ready(r)]
        if missing:
            await self.close()
            raise InferenceError(
                f"Triton at {self.address} has no ready model for recipe(s) {', '.join(missing)}: "
                "export them with `linewatch triton export --model DIR --repo REPO`"
            )
        black = np.zeros((WARM_SIZE, WARM_SIZE, 3), np.uint8)
        for recipe in sorted(self._recipes):
            detected = await self.detect(recipe, [black], [(WARM_SIZE, WARM_SIZE)])
            self._models[recipe] = f"{detected.model_name} {detected.model_version}"

    async def detect(
        self, recipe: str, images: Sequence[np.ndarray], sizes: Sequence[tuple[int, int]]
    ) -> Detected:
        if recipe not in self._recipes:
            raise KeyError(recipe)
        if self._client is None or self._gate is None:
            raise InferenceError(f"{self.url} is not started")
        if len(images) != len(sizes) or not images:
            raise InferenceError(f"{len(images)} images but {len(sizes)} sizes")
        for image in images:
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
                raise InferenceError(f"not an RGB uint8 frame: {image.dtype} {image.shape}")
        if not self.breaker.allow():
            raise InferenceUnavailable(
                f"Triton at {self.address} is failing: not tried again for {self.breaker.retry_in_s():.1f} s"
            )
        async with self._gate:
            start = time.perf_counter()
            try:
                answers = await asyncio.gather(
                    *(self._infer_with_retries(recipe, im, sz) for im, sz in zip(images, sizes, strict=True))
                )
            except InferenceUnavailable:
                self.breaker.failed()
                raise
            except BaseException:
                self.breaker.succeeded()  # the server answered: it is there
                raise
            self.breaker.succeeded()
            round_trip_ms = (time.perf_counter() - start) * 1000.0
        predictions, heatmaps, extras = [], [], []
        for result, heatmap in answers:
            prediction, extra = decode_prediction(result)
            predictions.append(prediction)
            heatmaps.append(heatmap)
            extras.append(extra)
        infer_ms = max(float(e.get("infer_ms", 0.0)) for e in extras)
        preprocess_ms = max(float(e.get("preprocess_ms", 0.0)) for e in extras)
        timings = {"preprocess": preprocess_ms, "infer": infer_ms, "round_trip": round_trip_ms}
        return Detected(
            predictions, heatmaps, timings, str(extras[0]["model_name"]), str(extras[0]["model_version"])
        )

    async def _infer_with_retries(
        self, recipe: str, image: np.ndarray, size: tuple[int, int]
    ) -> tuple[bytes, np.ndarray]:
        import tritonclient.grpc.aio as grpcclient

        frame = np.ascontiguousarray(image[None])
        inputs = [grpcclient.InferInput("IMAGE", list(frame.shape), "UINT8")]
        inputs[0].set_data_from_numpy(frame)
        shape = np.asarray([size], np.int32)
        inputs.append(grpcclient.InferInput("SIZE", [1, 2], "INT32"))
        inputs[1].set_data_from_numpy(shape)
        wait_s = 0.25
        for attempt in range(self.retries + 1):
            try:
                result = await self._client.infer(recipe, inputs, client_timeout=self.timeout_s)
                rows, heatmap = result.as_numpy("RESULT"), result.as_numpy("HEATMAP")
                if rows is None or heatmap is None:
                    raise InferenceError(f"Triton's {recipe} answered without RESULT or HEATMAP")
                return bytes(rows[0]), np.ascontiguousarray(heatmap[0])
            except InferenceError:
                raise
            except Exception as err:
                code = status_of(err)
                if (
                    code not in TRANSIENT
                    and "not ready" not in str(err)
                    and "unavailable" not in str(err).lower()
                ):
                    raise InferenceError(f"Triton's {recipe} refused the frame ({code}): {err}") from err
                if attempt == self.retries:
                    raise InferenceUnavailable(
                        f"Triton at {self.address} did not answer in {self.retries + 1} tries ({code}): {err}"
                    ) from err
                log.warning("Triton %s: %s (%s); trying again in %.2f s", recipe, code, err, wait_s)
                await asyncio.sleep(wait_s)
                wait_s = min(wait_s * 2, 5.0)
        raise AssertionError("unreachable")

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            try:
                await client.close()
            except Exception:  # closing a channel to a server that is gone
                log.debug("closing the Triton client failed", exc_info=True)
