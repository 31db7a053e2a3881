"""The models the API scores with, and the operating curve each one's card keeps."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel

from services.api.context import Context

router = APIRouter(tags=["models"])


class ModelSummary(BaseModel):
    recipe: str
    name: str
    version: str
    kind: str
    ng_threshold: float
    target_fpr: float
    review_threshold: float | None
    review_fpr: float | None
    goods: str | None  # where the good scores come from: cross-fitted, held-out
    defects: str | None  # painted (synthetic) or real: <folder>
    estimates: dict[str, float]
    curve: list[dict[str, float]]


class ModelList(BaseModel):
    models: list[ModelSummary]


@router.get("/v1/models")
def list_models(context: Context) -> ModelList:
    """Each recipe's model: its thresholds, the rates estimated at them, and its operating curve
    (estimated false-alarm and miss rates at every threshold). Empty when the models live in a
    remote inference server."""
    from services.vision.operating import estimates

    out = []
    for recipe, card in sorted(context.cards.items()):
        curve, point = card.operating, {}
        band = card.review if card.review is not None and card.review.method != "off" else None
        if curve is not None:
            point = {
                k: v for k, v in estimates(curve, card.image_calibration.threshold, band).items() if v == v
            }
        out.append(
            ModelSummary(
                recipe=recipe,
                name=card.name,
                version=card.version,
                kind=card.kind,
                ng_threshold=card.image_calibration.threshold,
                target_fpr=card.image_calibration.target_fpr,
                review_threshold=band.threshold if band is not None else None,
                review_fpr=band.review_fpr if band is not None else None,
                goods=curve.goods if curve is not None else None,
                defects=curve.defects if curve is not None else None,
                estimates=point,
                curve=_finite(curve.curve(60)) if curve is not None else [],
            )
        )
    return ModelList(models=out)


def _finite(points: list[dict[str, float]]) -> list[dict[str, Any]]:
    return [p for p in points if all(v == v for v in p.values())]
