"""The review queue over HTTP: list it, read a frame's label and history, record a decision."""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query, status
from pydantic import BaseModel, Field, ValidationError

from schemas.common import Name
from schemas.label import Label, LabelEvent, LabelStatus, Review, ReviewDecision
from services.api.context import ApiContext, Context
from services.review.autolabel import mask_of_png, store_mask
from services.storage.errors import LabelConflict, LabelNotFound
from services.storage.label_query import LabelQuery
from services.storage.ports import LabelStore

router = APIRouter(tags=["review"])


class LabelPage(BaseModel):
    total: int
    limit: int
    offset: int
    items: list[Label]


class LabelWithHistory(BaseModel):
    label: Label
    history: list[LabelEvent]


class ReviewRequest(BaseModel):
    """A person's decision on a frame. ``expected_revision``: the label's revision when it was read
    (a 409 if someone changed it since); ``mask_png_base64``: a corrected mask, a PNG (white =
    defect; the dashboard draws it at the heat map's size), base64."""

    decision: ReviewDecision
    reviewer: Name
    defect_class: Name | None = None
    note: str | None = Field(default=None, max_length=2000)
    expected_revision: int | None = Field(default=None, ge=0)
    mask_png_base64: str | None = Field(default=None, max_length=2_000_000)


def _store(context: ApiContext) -> LabelStore:
    if context.labels is None:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, "no label store is configured (stores.labels)"
        )
    return context.labels


@router.get("/v1/labels")
def list_labels(
    context: Context,
    label_status: Annotated[LabelStatus, Query(alias="status")] = "queued",
    line_id: str | None = None,
    camera_id: str | None = None,
    recipe: str | None = None,
    order: Literal["priority", "newest"] | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> LabelPage:
    """Labels with this status: the review queue (``status=queued``, highest priority first) by
    default; ``auto`` or ``reviewed`` newest first."""
    store = _store(context)
    query = LabelQuery(
        status=label_status,
        line_id=line_id,
        camera_id=camera_id,
        recipe=recipe,
        order=order or ("priority" if label_status == "queued" else "newest"),
        limit=limit,
        offset=offset,
    )
    return LabelPage(
        total=store.count_labels(query), limit=limit, offset=offset, items=store.query_labels(query)
    )


@router.get("/v1/labels/{frame_id}", responses={404: {"description": "No label for this frame"}})
def get_label(context: Context, frame_id: str) -> LabelWithHistory:
    """One frame's label and every change to it, oldest first."""
    store = _store(context)
    label = store.get_label(frame_id)
    if label is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no label for frame {frame_id!r}")
    return LabelWithHistory(label=label, history=store.history(frame_id))


@router.post(
    "/v1/labels/{frame_id}/review",
    responses={
        404: {"description": "No label for this frame"},
        409: {"description": "The label changed since expected_revision"},
        422: {"description": "A decision that contradicts itself, or a mask that is not a PNG"},
    },
)
def review_label(context: Context, frame_id: str, request: ReviewRequest) -> Label:
    """Record a person's decision: accept the defect (with its class, a corrected mask) or reject
    the verdict as a false alarm (``good``). Kept in the label's history with the reviewer's name."""
    store = _store(context)
    if store.get_label(frame_id) is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no label for frame {frame_id!r}")
    mask = None
    if request.mask_png_base64 is not None:
        if request.decision != "defect":
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT, "a mask goes with the decision 'defect'"
            )
        try:
            drawn = mask_of_png(base64.b64decode(request.mask_png_base64, validate=True))
        except (binascii.Error, ValueError) as error:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"mask_png_base64: {error}") from None
        mask = store_mask(context.blobs, drawn)
    try:
        review = Review(
            decision=request.decision,
            defect_class=request.defect_class,
            mask=mask,
            note=request.note,
            reviewer=request.reviewer,
            reviewed_at=datetime.now(UTC),
        )
    except ValidationError as error:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, error.errors()[0]["msg"]) from None
    try:
        return store.review(frame_id, review, request.expected_revision)
    except LabelNotFound:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no label for frame {frame_id!r}") from None
    except LabelConflict as error:
        raise HTTPException(status.HTTP_409_CONFLICT, str(error)) from None
