"""A running line follows the registry: when a recipe's production model changes (promote, rollback),
the new model is loaded and swapped in (:class:`services.inference.swap.SwappablePort`) without
losing or repeating a frame."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping

from services.inference.ports import InferencePort
from services.inference.swap import SwappablePort
from services.registry.ports import ModelRegistry
from services.vision.artifact import ArtifactError
from services.vision.inspector import Inspector

log = logging.getLogger(__name__)


def production_inspectors(registry: ModelRegistry, recipes: list[str] | None = None) -> dict[str, Inspector]:
    """The production model of each recipe (every recipe with one when ``recipes`` is None)."""
    out: dict[str, Inspector] = {}
    for recipe in recipes if recipes is not None else registry.recipes():
        version = registry.stages(recipe).production
        if version is not None:
            out[recipe] = Inspector.load(registry.model_dir(recipe, version))
    return out


class RegistryFollower:
    """Polls the registry every ``interval_s``; on a new production version of a served recipe it
    loads the model (in a thread), opens a port with ``open_port`` over the new set of models and
    swaps it in. A version that fails to load is logged and skipped until production moves again;
    the running models keep serving."""

    def __init__(
        self,
        registry: ModelRegistry,
        port: SwappablePort,
        inspectors: Mapping[str, Inspector],
        open_port: Callable[[dict[str, Inspector]], InferencePort],
        interval_s: float = 5.0,
    ) -> None:
        self.registry, self.port, self.open_port = registry, port, open_port
        self.inspectors = dict(inspectors)
        self.interval_s = interval_s
        self.failed: dict[str, str] = {}  # recipe -> the version that would not load
        self.swaps = 0
        self.load_s: list[float] = []  # per swap: loading the new models from the registry

    async def run(self) -> None:
        """Follow until cancelled."""
        while True:
            try:
                await self.check()
            except asyncio.CancelledError:
                raise
            except Exception:  # a registry on a flaky volume: log, keep serving, look again later
                log.exception("following the model registry failed; the running models keep serving")
            await asyncio.sleep(self.interval_s)

    async def check(self) -> bool:
        """Look once; True when models were swapped."""
        wanted: dict[str, str] = {}
        for recipe, inspector in self.inspectors.items():
            version = (await asyncio.to_thread(self.registry.stages, recipe)).production
            if (
                version is not None
                and version != inspector.card.version
                and self.failed.get(recipe) != version
            ):
                wanted[recipe] = version
        if not wanted:
            return False
        models = dict(self.inspectors)
        loading = time.perf_counter()
        for recipe, version in wanted.items():
            try:
                path = self.registry.model_dir(recipe, version)
                models[recipe] = await asyncio.to_thread(Inspector.load, path)
            except (ArtifactError, OSError, ValueError) as error:
                log.error(
                    "model %s %s from the registry did not load (%s): keeping %s",
                    recipe,
                    version,
                    error,
                    self.inspectors[recipe].card.version,
                )
                self.failed[recipe] = version
                models[recipe] = self.inspectors[recipe]
        if all(models[r] is self.inspectors[r] for r in models):
            return False
        self.load_s.append(time.perf_counter() - loading)
        await self.port.swap(self.open_port(models))
        self.inspectors = models
        self.swaps += 1
        return True
