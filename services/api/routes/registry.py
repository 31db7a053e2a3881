"""The model registry over HTTP: its recipes and versions, promote and roll back (the lines following
the registry swap models within their poll interval)."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, status
from pydantic import BaseModel, Field

from schemas.common import Name
from services.api.context import ApiContext, Context
from services.registry.ports import ModelRegistry, RecipeStages, RegisteredModel, RegistryError

router = APIRouter(tags=["registry"])


class RecipeModels(BaseModel):
    stages: RecipeStages
    versions: list[RegisteredModel]


class StageRequest(BaseModel):
    actor: Name = Field(description="Who makes the change (kept in the recipe's history)")
    version: Name | None = Field(default=None, description="The version to promote (promote only)")


def _registry(context: ApiContext) -> ModelRegistry:
    if context.model_registry is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "no model registry is configured (registry)")
    return context.model_registry


@router.get("/v1/registry")
def list_registry(context: Context) -> dict[str, RecipeModels]:
    """Every recipe in the registry: its stages (production, shadow, canary, history) and versions."""
    registry = _registry(context)
    return {
        r: RecipeModels(stages=registry.stages(r), versions=registry.versions(r)) for r in registry.recipes()
    }


@router.post(
    "/v1/registry/{recipe}/promote",
    responses={404: {"description": "No such recipe or version"}, 503: {"description": "No registry"}},
)
def promote(context: Context, recipe: str, request: StageRequest) -> RecipeStages:
    """Make ``version`` the recipe's production model."""
    if request.version is None:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "promote needs the version")
    try:
        return _registry(context).promote(recipe, request.version, request.actor)
    except RegistryError as error:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(error)) from None


@router.post(
    "/v1/registry/{recipe}/rollback",
    responses={409: {"description": "Nothing to roll back to"}, 503: {"description": "No registry"}},
)
def rollback(context: Context, recipe: str, request: StageRequest) -> RecipeStages:
    """Put back the production model before the current one."""
    try:
        return _registry(context).rollback(recipe, request.actor)
    except RegistryError as error:
        raise HTTPException(status.HTTP_409_CONFLICT, str(error)) from None
