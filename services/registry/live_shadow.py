"""Live shadow: a candidate model scores the frames the line is inspecting, beside production, and
its verdicts are written down, never acted on.

The line hands each scored batch to :meth:`LiveShadow.observe` (the frames' ids, the pixels, and what
production answered). The candidate scores the batch in the background, at most ``max_in_flight``
batches at once: when it falls behind, batches are skipped and counted rather than slowing the
line (a shadow is a sample, not a second line). Each frame becomes one JSON line in the candidate's
registry folder (``shadow-live.jsonl``): both models' verdicts and scores, which
``linewatch models compare --live`` turns into the comparison report.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from services.inference.ports import InferencePort
from services.steps.detect import Detected

log = logging.getLogger(__name__)
LIVE_FILE = "shadow-live.jsonl"


class LiveShadow:
    """Candidate ports by recipe (set and replaced by the registry follower) and where their verdicts go."""

    def __init__(self, max_in_flight: int = 1) -> None:
        self.max_in_flight = max_in_flight
        self.ports: dict[str, tuple[InferencePort, Path]] = {}  # recipe -> candidate port, its output file
        self.scored = 0
        self.skipped = 0
        self.failed = 0
        self._in_flight: set[asyncio.Task[None]] = set()
        self._write_lock = threading.Lock()

    async def set(self, recipe: str, port: InferencePort | None, folder: Path | None = None) -> None:
        """Start scoring ``recipe`` with ``port`` (started here), writing into ``folder``; None stops."""
        old = self.ports.pop(recipe, None)
        if port is not None and folder is not None:
            await port.start()
            self.ports[recipe] = (port, folder / LIVE_FILE)
        if old is not None:
            await self.drain()
            await old[0].close()

    def observe(
        self,
        recipe: str,
        frame_ids: Sequence[str],
        images: Sequence[np.ndarray],
        sizes: Sequence[tuple[int, int]],
        production: Detected,
    ) -> None:
        """Score the batch with the recipe's candidate in the background (or skip it when busy)."""
        entry = self.ports.get(recipe)
        if entry is None:
            return
        if len(self._in_flight) >= self.max_in_flight:
            self.skipped += len(frame_ids)
            return
        task = asyncio.create_task(
            self._score(recipe, entry, list(frame_ids), list(images), list(sizes), production)
        )
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)

    async def _score(
        self,
        recipe: str,
        entry: tuple[InferencePort, Path],
        frame_ids: list[str],
        images: list[np.ndarray],
        sizes: list[tuple[int, int]],
        production: Detected,
    ) -> None:
        port, path = entry
        try:
            candidate = await port.detect(recipe, images, sizes)
        except Exception as error:  # the shadow never harms the line: count, log, go on
            self.failed += len(frame_ids)
            log.warning("the shadow model failed on a batch of %s (%s)", recipe, error)
            return
        lines = [
            json.dumps(
                {
                    "frame_id": frame_id,
                    "production_version": production.model_version,
                    "production_verdict": prod.verdict,
                    "production_score": round(float(prod.score), 6),
                    "candidate_version": candidate.model_version,
                    "candidate_verdict": cand.verdict,
                    "candidate_score": round(float(cand.score), 6),
                    "candidate_score_raw": round(float(cand.score_raw), 6),
                }
            )
            for frame_id, prod, cand in zip(
                frame_ids, production.predictions, candidate.predictions, strict=True
            )
        ]
        await asyncio.to_thread(self._append, path, lines)
        self.scored += len(lines)

    def _append(self, path: Path, lines: list[str]) -> None:
        with self._write_lock, open(path, "a") as out:
            out.write("\n".join(lines) + "\n")

    async def drain(self) -> None:
        """Wait for the batches being scored."""
        if self._in_flight:
            await asyncio.gather(*self._in_flight, return_exceptions=True)

    async def close(self) -> None:
        await self.drain()
        for port, _ in self.ports.values():
            await port.close()
        self.ports.clear()
