"""Filters for reading labels back: the review queue and the reviewed frames."""

from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from schemas.common import UtcDatetime
from schemas.inspection import Verdict
from schemas.label import LabelStatus, ReviewDecision


class LabelQuery(BaseModel):
    """Which labels to read; every filter left as None matches everything.

    Time ranges are inclusive at the start and exclusive at the end: ``captured_*`` on when the frame
    was taken, ``queued_*`` on when it joined the review queue (counting a day's queued frames
    against the review budget). ``order`` "priority" lists the highest priority first (the review
    queue), "newest" the latest captured first. ``limit``/``offset`` page; counts ignore them.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    status: LabelStatus | None = None
    line_id: str | None = None
    camera_id: str | None = None
    recipe: str | None = None
    verdict: Verdict | None = None
    decision: ReviewDecision | None = Field(default=None, description="Reviewed with this decision")
    model_version: str | None = None
    captured_from: UtcDatetime | None = None
    captured_to: UtcDatetime | None = None
    queued_from: UtcDatetime | None = None
    queued_to: UtcDatetime | None = None
    order: Literal["priority", "newest"] = "newest"
    limit: int = Field(default=100, ge=1, le=10_000)
    offset: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _ranges_not_empty(self) -> Self:
        for start, end, name in (
            (self.captured_from, self.captured_to, "captured"),
            (self.queued_from, self.queued_to, "queued"),
        ):
            if start and end and start >= end:
                raise ValueError(f"{name}_from must be before {name}_to")
        return self
