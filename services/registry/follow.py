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
from services.registry.live_shadow import LiveShadow
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
    """Polls the registry every ``interval_s``; on a new production version of a served recipe, or
    a canary set, changed or taken off, it loads the model (in a thread), opens a port with
    ``open_port`` over the new set of models (a :class:`~services.inference.canary.CanaryPort` when a
    recipe has a canary) and swaps it in. A version that fails to load is logged and skipped until
    the registry names another; the running models keep serving."""

    def __init__(
        self,
        registry: ModelRegistry,
        port: SwappablePort,
        inspectors: Mapping[str, Inspector],
        open_port: Callable[[dict[str, Inspector]], InferencePort],
        interval_s: float = 5.0,
        shadow: LiveShadow | None = None,
    ) -> None:
        self.registry, self.port, self.open_port = registry, port, open_port
        self.shadow = shadow  # where the recipes' shadow models score (None: shadows are not followed)
        self.shadows: dict[str, str] = {}  # recipe -> the shadow version scoring now
        self.inspectors = dict(inspectors)
        self.interval_s = interval_s
        self.failed: dict[str, str] = {}  # recipe -> the version that would not load
        self.canaries: dict[str, tuple[Inspector, float]] = {}  # recipe -> candidate and its share
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
        wanted_production: dict[str, str] = {}
        wanted_canary: dict[str, tuple[str, float] | None] = {}
        for recipe, inspector in self.inspectors.items():
            stages = await asyncio.to_thread(self.registry.stages, recipe)
            await self._follow_shadow(recipe, stages.shadow)
            version = stages.production
            if (
                version is not None
                and version != inspector.card.version
                and self.failed.get(recipe) != version
            ):
                wanted_production[recipe] = version
            canary = (stages.canary, stages.canary_share or 0.0) if stages.canary is not None else None
            running = self.canaries.get(recipe)
            now = (running[0].card.version, running[1]) if running is not None else None
            if canary != now and (canary is None or self.failed.get(recipe) != canary[0]):
                wanted_canary[recipe] = canary
        if not wanted_production and not wanted_canary:
            return False
        loading = time.perf_counter()
        models = dict(self.inspectors)
        canaries = dict(self.canaries)
        for recipe, version in wanted_production.items():
            loaded = await self._load(recipe, version)
            if loaded is not None:
                models[recipe] = loaded
        for recipe, wanted in wanted_canary.items():
            if wanted is None:
                canaries.pop(recipe, None)
                continue
            loaded = await self._load(recipe, wanted[0])
            if loaded is not None:
                canaries[recipe] = (loaded, wanted[1])
        same_models = all(models[r] is self.inspectors[r] for r in models)
        if same_models and canaries == self.canaries:
            return False
        self.load_s.append(time.perf_counter() - loading)
        port = self.open_port(models)
        if canaries:
            from services.inference.canary import CanaryPort

            port = CanaryPort(
                port,
                {r: (self.open_port({r: inspector}), share) for r, (inspector, share) in canaries.items()},
            )
        await self.port.swap(port)
        self.inspectors, self.canaries = models, canaries
        self.swaps += 1
        return True

    async def _follow_shadow(self, recipe: str, version: str | None) -> None:
        if self.shadow is None or self.shadows.get(recipe) == version:
            return
        if version is None:
            await self.shadow.set(recipe, None)
            del self.shadows[recipe]
            log.info("shadow of %s stopped", recipe)
            return
        if self.failed.get(f"shadow:{recipe}") == version:
            return
        loaded = await self._load(recipe, version)
        if loaded is None:
            self.failed[f"shadow:{recipe}"] = version
            return
        folder = self.registry.entry_dir(recipe, version)
        await self.shadow.set(recipe, self.open_port({recipe: loaded}), folder)
        self.shadows[recipe] = version
        log.info("shadow of %s: %s scores beside production, its verdicts into %s", recipe, version, folder)

    async def _load(self, recipe: str, version: str) -> Inspector | None:
        try:
            return await asyncio.to_thread(Inspector.load, self.registry.model_dir(recipe, version))
        except (ArtifactError, OSError, ValueError) as error:
            log.error(
                "model %s %s from the registry did not load (%s): the running models keep serving",
                recipe,
                version,
                error,
            )
            self.failed[recipe] = version
            return None
