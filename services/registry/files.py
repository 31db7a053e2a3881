"""A model registry in a folder (local or a shared volume: ``file:///var/linewatch/registry``).

    ROOT/<recipe>/<version>/artifact/     the model artifact (card.json, weights.safetensors)
    ROOT/<recipe>/<version>/entry.json    what the registry knows of it (RegisteredModel)
    ROOT/<recipe>/stages.json             production, shadow and the history of changes

A version is copied into a temporary folder and renamed into place, ``stages.json`` is written to a
temporary file and renamed over the old one, and every change holds an exclusive lock on
``ROOT/<recipe>/.lock``: a reader (a running line) sees the old state or the new one, never half of
one, and two commands changing the same recipe at once are serialised.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from services.registry.ports import RecipeStages, RegisteredModel, RegistryError, StageAction, StageChange
from services.vision.artifact import ArtifactError, file_sha256, read_card

SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


class FileModelRegistry:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def register(
        self,
        model_dir: Path,
        recipe: str,
        actor: str,
        note: str | None = None,
        evaluation: dict[str, Any] | None = None,
    ) -> RegisteredModel:
        from services.vision.operating import estimates

        card = read_card(model_dir)  # ArtifactError when it is not a model
        _check_name(recipe, "recipe")
        _check_name(card.version, "model version")
        target = self._recipe_dir(recipe) / card.version
        with self._locked(recipe):
            if target.exists():
                if _same_artifact(target / "artifact", model_dir):
                    return self._entry(recipe, card.version)
                raise RegistryError(
                    f"{recipe} already has a different model with version {card.version}: retrain or rename"
                )
            incoming = self._recipe_dir(recipe) / f".incoming-{uuid.uuid4().hex}"
            try:
                shutil.copytree(model_dir, incoming / "artifact")
                point = (
                    estimates(card.operating, card.image_calibration.threshold, card.review)
                    if card.operating is not None
                    else {}
                )
                entry = RegisteredModel(
                    recipe=recipe,
                    version=card.version,
                    name=card.name,
                    kind=card.kind,
                    registered_at=datetime.now(UTC),
                    registered_by=actor,
                    source=str(model_dir.resolve()),
                    note=note,
                    evaluation=evaluation or {},
                    estimates={k: v for k, v in point.items() if v == v},  # (NaN: no defect scores)
                )
                _write_json(incoming / "entry.json", entry.model_dump(mode="json"))
                os.rename(incoming, target)
            finally:
                shutil.rmtree(incoming, ignore_errors=True)
        return entry

    def versions(self, recipe: str) -> list[RegisteredModel]:
        folder = self._recipe_dir(recipe)
        if not folder.is_dir():
            return []
        entries = [self._entry(recipe, p.name) for p in folder.iterdir() if (p / "entry.json").is_file()]
        return sorted(entries, key=lambda e: (e.registered_at, e.version))

    def recipes(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and SAFE_NAME.match(p.name))

    def stages(self, recipe: str) -> RecipeStages:
        path = self._recipe_dir(recipe) / "stages.json"
        if not path.is_file():
            return RecipeStages(recipe=recipe)
        return RecipeStages.model_validate_json(path.read_text())

    def promote(self, recipe: str, version: str, actor: str) -> RecipeStages:
        self._need(recipe, version)
        return self._change(recipe, actor, "promoted", version)

    def rollback(self, recipe: str, actor: str) -> RecipeStages:
        return self._change(recipe, actor, "rolled back", None)

    def set_shadow(self, recipe: str, version: str | None, actor: str) -> RecipeStages:
        if version is not None:
            self._need(recipe, version)
        return self._change(recipe, actor, "shadow" if version is not None else "shadow off", version)

    def set_canary(self, recipe: str, version: str | None, share: float | None, actor: str) -> RecipeStages:
        """Let ``version`` take ``share`` (0 < share < 1) of the recipe's frames; None turns it off."""
        if version is not None:
            self._need(recipe, version)
            if share is None or not 0 < share < 1:
                raise RegistryError(f"a canary takes a share of the frames between 0 and 1, got {share}")
        return self._change(recipe, actor, "canary" if version is not None else "canary off", version, share)

    def model_dir(self, recipe: str, version: str) -> Path:
        self._need(recipe, version)
        return self._recipe_dir(recipe) / version / "artifact"

    def entry_dir(self, recipe: str, version: str) -> Path:
        """The version's folder in the registry (its artifact, entry and shadow reports)."""
        self._need(recipe, version)
        return self._recipe_dir(recipe) / version

    def close(self) -> None:
        """Nothing to let go of (the registry holds no open files between calls)."""

    # ------------------------------------------------------------------------------------------

    def _change(
        self, recipe: str, actor: str, action: StageAction, version: str | None, share: float | None = None
    ) -> RecipeStages:
        with self._locked(recipe):
            stages = self.stages(recipe)
            now = datetime.now(UTC)
            if action == "promoted":
                update: dict[str, Any] = {"production": version}
                previous = stages.production
            elif action == "rolled back":
                timeline = production_timeline(stages)
                if len(timeline) < 2:
                    raise RegistryError(f"{recipe} has no earlier production model to roll back to")
                version, previous = timeline[-2], stages.production
                update = {"production": version}
            elif action in ("canary", "canary off"):
                update, previous = {"canary": version, "canary_share": share}, stages.canary
            else:
                update, previous = {"shadow": version}, stages.shadow
            change = StageChange(at=now, actor=actor, action=action, version=version, previous=previous)
            new = stages.model_copy(update={**update, "history": [*stages.history, change]})
            _write_json(self._recipe_dir(recipe) / "stages.json", new.model_dump(mode="json"))
        return new

    def _need(self, recipe: str, version: str) -> None:
        _check_name(recipe, "recipe")
        _check_name(version, "model version")
        if not (self._recipe_dir(recipe) / version / "entry.json").is_file():
            known = ", ".join(e.version for e in self.versions(recipe)) or "none"
            raise RegistryError(f"{recipe} has no model version {version!r} (registered: {known})")

    def _entry(self, recipe: str, version: str) -> RegisteredModel:
        return RegisteredModel.model_validate_json(
            (self._recipe_dir(recipe) / version / "entry.json").read_text()
        )

    def _recipe_dir(self, recipe: str) -> Path:
        _check_name(recipe, "recipe")
        return self.root / recipe

    @contextmanager
    def _locked(self, recipe: str) -> Iterator[None]:
        folder = self._recipe_dir(recipe)
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


def production_timeline(stages: RecipeStages) -> list[str]:
    """The production versions in force one after another, as promotions push and rollbacks pop them."""
    timeline: list[str] = []
    for change in stages.history:
        if change.action == "promoted" and change.version is not None:
            timeline.append(change.version)
        elif change.action == "rolled back" and timeline:
            timeline.pop()
    return timeline


def _check_name(name: str, what: str) -> None:
    if not SAFE_NAME.match(name):
        raise RegistryError(f"{what} {name!r} cannot name a registry folder (letters, digits, . _ -)")


def _same_artifact(stored: Path, candidate: Path) -> bool:
    try:
        return (
            all(
                file_sha256(stored / name) == file_sha256(candidate / name)
                for name in ("weights.safetensors",)
            )
            and read_card(stored).version == read_card(candidate).version
        )
    except (OSError, ArtifactError):
        return False


def _write_json(path: Path, data: Any) -> None:
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    with open(temporary, "w") as out:
        json.dump(data, out, indent=2)
        out.flush()
        os.fsync(out.fileno())
    os.replace(temporary, path)


def open_registry(url: str) -> FileModelRegistry:
    """The registry a URL names: ``file:///var/linewatch/registry`` (or ``file:registry``, relative)."""
    from services.storage.urls import file_url_to_path

    if not url.startswith("file:"):
        raise ValueError(f"unsupported model registry URL {url!r}: use file:///path/to/registry")
    return FileModelRegistry(file_url_to_path(url))
