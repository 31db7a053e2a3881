"""The inference port: score a batch of one recipe's decoded frames, wherever the model lives."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np

from services.steps.detect import Detected

log = logging.getLogger(__name__)
UNAVAILABLE_WAIT_S = (0.5, 10.0)  # first and longest wait for an inference server that is away


class InferenceError(RuntimeError):
    """A batch could not be scored (the model failed on it, or the server or worker is gone).

    The caller dead-letters the batch's frames and goes on; the adapter recovers by itself (a dead
    worker is started again, a server is retried) for the next batch."""


class InferenceUnavailable(InferenceError):
    """The model server cannot be reached or is not ready (after the adapter's own retries), and
    nothing is known to be wrong with the batch: callers wait and send it again, never dead-letter it.
    """


class InferencePort(Protocol):
    """Scores batches of decoded frames with the model of their recipe.

    Used from one asyncio event loop: :meth:`start` in it, then :meth:`detect` from any number of
    its tasks (at most :attr:`slots` are scored at once; more wait their turn), then :meth:`close`.
    """

    @property
    def url(self) -> str:
        """The URL this adapter was opened with (for logs and errors)."""
        ...

    @property
    def recipes(self) -> frozenset[str]:
        """The recipes it has a model for; frames of any other recipe are refused at admission."""
        ...

    @property
    def models(self) -> dict[str, str]:
        """Recipe → the model that scores it, as "name version" (for /ready and logs)."""
        ...

    @property
    def slots(self) -> int:
        """How many batches it scores at once: a caller that keeps this many in flight keeps it busy."""
        ...

    async def start(self) -> None:
        """Load the models (or connect) and warm up; raises InferenceError when it cannot."""
        ...

    async def detect(
        self, recipe: str, images: Sequence[np.ndarray], sizes: Sequence[tuple[int, int]]
    ) -> Detected:
        """Score ``images`` (decoded RGB frames of ``recipe``) as one batch; ``sizes`` are the frames'
        (height, width) that defects and heat maps are measured in. Raises InferenceError (or
        KeyError for a recipe it has no model for)."""
        ...

    async def close(self) -> None:
        """Stop scoring and let go of workers and connections; safe to call twice."""
        ...


class WrappedPort:
    """What a port that wraps another one says it serves: the wrapped port's (subclasses change
    what they must)."""

    def __init__(self, port: InferencePort) -> None:
        self.port = port

    @property
    def url(self) -> str:
        return self.port.url

    @property
    def recipes(self) -> frozenset[str]:
        return self.port.recipes

    @property
    def models(self) -> dict[str, str]:
        return self.port.models

    @property
    def slots(self) -> int:
        return self.port.slots


def describe_models(inspectors: Mapping[str, object]) -> dict[str, str]:
    """Recipe → "name version" of in-process inspectors (anything with a ``card``)."""
    out = {}
    for recipe, inspector in inspectors.items():
        card = getattr(inspector, "card", None)
        out[recipe] = f"{card.name} {card.version}" if card is not None else type(inspector).__name__
    return out


async def detect_when_served(
    port: InferencePort, recipe: str, images: Sequence[np.ndarray], sizes: Sequence[tuple[int, int]]
) -> Detected:
    """``port``'s answer, waiting for as long as its server is away (:class:`InferenceUnavailable`):
    the batch is sent again, never dead-lettered for a server's restart. Other errors go up."""
    wait_s = UNAVAILABLE_WAIT_S[0]
    while True:
        try:
            return await port.detect(recipe, images, sizes)
        except InferenceUnavailable as err:
            log.warning("inference unavailable (%s); trying the batch again in %.1f s", err, wait_s)
            await asyncio.sleep(wait_s)
            wait_s = min(wait_s * 2, UNAVAILABLE_WAIT_S[1])
