"""A canary: a candidate model takes a set share of a recipe's frames; the rest go to production.

Routing is by batch (a batch is scored by one model) and keeps the candidate's share of the frames
as close to the setting as whole batches allow: a batch goes to the candidate while the candidate
has scored less than its share of the recipe's frames so far. Each record's ``model_version`` says
which model scored it, so the two are compared on the same line at the same time (``linewatch
query --by model_version`` style groupings, review outcomes per version).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

import numpy as np

from services.inference.ports import InferencePort, WrappedPort
from services.steps.detect import Detected


class CanaryPort(WrappedPort):
    """``port`` (production) for every recipe; ``candidates`` maps a recipe to (port, share)."""

    def __init__(self, port: InferencePort, candidates: Mapping[str, tuple[InferencePort, float]]) -> None:
        super().__init__(port)
        for recipe, (candidate, share) in candidates.items():
            if not 0 < share < 1:
                raise ValueError(f"the canary share of {recipe} must lie between 0 and 1, got {share}")
            if recipe not in port.recipes or recipe not in candidate.recipes:
                raise ValueError(f"the canary of {recipe} needs {recipe} served by both models")
        self.candidates = dict(candidates)
        self.frames: dict[str, int] = {}  # recipe -> frames routed
        self.to_candidate: dict[str, int] = {}  # recipe -> of them, to the candidate

    @property
    def models(self) -> dict[str, str]:
        out = dict(self.port.models)
        for recipe, (candidate, share) in self.candidates.items():
            out[recipe] = f"{out[recipe]} + canary {candidate.models.get(recipe, '?')} at {share:.0%}"
        return out

    async def start(self) -> None:
        await asyncio.gather(self.port.start(), *(c.start() for c, _ in self.candidates.values()))

    async def detect(
        self, recipe: str, images: Sequence[np.ndarray], sizes: Sequence[tuple[int, int]]
    ) -> Detected:
        port = self.port
        if recipe in self.candidates:
            candidate, share = self.candidates[recipe]
            total, taken = self.frames.get(recipe, 0), self.to_candidate.get(recipe, 0)
            if taken < share * (total + len(images)):
                port = candidate
                self.to_candidate[recipe] = taken + len(images)
            self.frames[recipe] = total + len(images)
        return await port.detect(recipe, images, sizes)

    async def close(self) -> None:
        await asyncio.gather(self.port.close(), *(c.close() for c, _ in self.candidates.values()))
