"""The model-registry port and its records."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

StageAction = Literal["promoted", "rolled back", "shadow", "shadow off", "canary", "canary off"]


class RegisteredModel(BaseModel):
    """One model version of a recipe, as the registry keeps it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    recipe: str
    version: str  # the model card's version (unique per recipe)
    name: str  # the card's name
    kind: str  # the detector kind (patchcore, ensemble, ...)
    registered_at: datetime
    registered_by: str
    source: str  # where it was registered from (a model directory)
    note: str | None = None
    evaluation: dict[str, Any] = Field(default_factory=dict, description="e.g. `linewatch evaluate --json`")
    estimates: dict[str, float] = Field(
        default_factory=dict, description="the card's operating-point estimates"
    )


class StageChange(BaseModel):
    """One change of a recipe's stages: who moved which version where, when."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    at: datetime
    actor: str
    action: StageAction
    version: str | None
    previous: str | None


class RecipeStages(BaseModel):
    """Which version of a recipe's model the line runs, which one scores in shadow, and the history."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    recipe: str
    production: str | None = None
    shadow: str | None = None
    canary: str | None = None  # takes canary_share of the recipe's frames on a line following the registry
    canary_share: float | None = None
    history: list[StageChange] = Field(default_factory=list)


class RegistryError(ValueError):
    """A registry request that cannot be done (an unknown recipe or version, nothing to roll back to)."""


class ModelRegistry(Protocol):
    """Versioned model artifacts per recipe and the stage each is in."""

    def register(
        self,
        model_dir: Path,
        recipe: str,
        actor: str,
        note: str | None = None,
        evaluation: dict[str, Any] | None = None,
    ) -> RegisteredModel:
        """Copy the artifact in; registering the same version again is refused unless identical."""
        ...

    def versions(self, recipe: str) -> list[RegisteredModel]:
        """The recipe's versions, oldest registered first."""
        ...

    def recipes(self) -> list[str]: ...

    def stages(self, recipe: str) -> RecipeStages: ...

    def promote(self, recipe: str, version: str, actor: str) -> RecipeStages:
        """Make ``version`` the recipe's production model (the running lines follow)."""
        ...

    def rollback(self, recipe: str, actor: str) -> RecipeStages:
        """Put back the production model that came before the current one."""
        ...

    def set_shadow(self, recipe: str, version: str | None, actor: str) -> RecipeStages: ...

    def set_canary(
        self, recipe: str, version: str | None, share: float | None, actor: str
    ) -> RecipeStages: ...

    def model_dir(self, recipe: str, version: str) -> Path:
        """Where the version's artifact can be loaded from (``Inspector.load``)."""
        ...

    def entry_dir(self, recipe: str, version: str) -> Path:
        """The version's own folder (shadow verdicts and reports are kept there)."""
        ...
