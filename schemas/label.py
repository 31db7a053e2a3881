"""What is known about an inspected frame beyond its verdict: the auto-label linewatch wrote from
the inspection, its place in the review queue, and what a person decided when they reviewed it."""

from typing import Any, Literal

from pydantic import ConfigDict, Field, model_validator
from pydantic.config import JsonDict

from schemas.blob import BlobRef
from schemas.common import FiniteFloat, Name, Record, UtcDatetime
from schemas.defect import DEFECT_EXAMPLE, Defect
from schemas.ids import Uuid7Str
from schemas.inspection import Verdict

LabelStatus = Literal["auto", "queued", "reviewed"]
"""auto: written from the inspection alone; queued: waiting for a person; reviewed: a person decided."""

ReviewDecision = Literal["defect", "good"]
"""defect: the part is defective (the verdict accepted, or a missed defect marked); good: the part is
good (an NG or REVIEW verdict rejected as a false alarm)."""

LabelAction = Literal["auto-labelled", "queued", "reviewed"]

REVIEW_EXAMPLE: JsonDict = {
    "schema_version": 1,
    "decision": "defect",
    "defect_class": "crack",
    "mask": None,
    "note": "hairline crack at the shoulder",
    "reviewer": "m.keller",
    "reviewed_at": "2025-03-04T09:02:11Z",
}

LABEL_EXAMPLE: JsonDict = {
    "schema_version": 1,
    "frame_id": "01956039-694b-7c2e-9a41-5d3e2b7f8c10",
    "line_id": "press-line-2",
    "station_id": "st-040-weld",
    "camera_id": "cam-040-top",
    "recipe": "bracket-a7",
    "captured_at": "2025-03-04T08:15:30.123000Z",
    "model_name": "patchcore-bracket-a7",
    "model_version": "2025.03.01-r2",
    "verdict": "REVIEW",
    "score": 0.47,
    "score_raw": 38.2,
    "defects": [DEFECT_EXAMPLE],
    "mask": None,
    "image": None,
    "heatmap": None,
    "status": "reviewed",
    "priority": 0.94,
    "reasons": ["review band", "score near the NG threshold"],
    "queued_at": "2025-03-04T08:15:31Z",
    "review": REVIEW_EXAMPLE,
    "revision": 2,
    "labelled_at": "2025-03-04T08:15:31Z",
}


class Review(Record):
    """A person's decision on one frame; a later review of the same frame replaces it (the label
    store's history keeps both)."""

    model_config = ConfigDict(json_schema_extra={"examples": [REVIEW_EXAMPLE]})

    schema_version: Literal[1] = 1
    decision: ReviewDecision
    defect_class: Name | None = Field(default=None, description="The class the reviewer gives the defect")
    mask: BlobRef | None = Field(
        default=None, description="A corrected defect mask (8-bit PNG, 255 = defect) in the blob store"
    )
    note: str | None = Field(default=None, max_length=2000)
    reviewer: Name
    reviewed_at: UtcDatetime

    @model_validator(mode="after")
    def _good_has_no_defect(self) -> "Review":
        if self.decision == "good" and (self.defect_class is not None or self.mask is not None):
            raise ValueError("a review that calls the part good gives no defect class or mask")
        return self


LABEL_EVENT_EXAMPLE: JsonDict = {
    "schema_version": 1,
    "frame_id": "01956039-694b-7c2e-9a41-5d3e2b7f8c10",
    "at": "2025-03-04T09:02:11Z",
    "actor": "m.keller",
    "action": "reviewed",
    "changes": {
        "status": ["queued", "reviewed"],
        "decision": [None, "defect"],
        "defect_class": [None, "crack"],
    },
}


class LabelEvent(Record):
    """One change to a label: who, when, what, and the fields it changed (field → [before, after])."""

    model_config = ConfigDict(json_schema_extra={"examples": [LABEL_EVENT_EXAMPLE]})

    schema_version: Literal[1] = 1
    frame_id: Uuid7Str
    at: UtcDatetime
    actor: Name
    action: LabelAction
    changes: dict[str, list[Any]] = Field(default_factory=dict)


class Label(Record):
    """The label of one inspected frame, keyed by ``frame_id`` like its inspection."""

    model_config = ConfigDict(json_schema_extra={"examples": [LABEL_EXAMPLE]})

    schema_version: Literal[1] = 1
    frame_id: Uuid7Str
    line_id: Name
    station_id: Name
    camera_id: Name
    recipe: Name
    captured_at: UtcDatetime
    model_name: Name
    model_version: Name
    verdict: Verdict = Field(description="The inspection's verdict (what the line acted on)")
    score: float = Field(ge=0, le=1)
    score_raw: FiniteFloat
    defects: list[Defect] = Field(default_factory=list, description="The inspection's defects: boxes, scores")
    mask: BlobRef | None = Field(
        default=None,
        description="The auto-label's mask: the heat map above the NG threshold after morphology (PNG)",
    )
    image: BlobRef | None = None
    heatmap: BlobRef | None = None
    status: LabelStatus = "auto"
    priority: FiniteFloat = Field(default=0.0, description="Review-queue priority: higher is reviewed first")
    reasons: list[str] = Field(default_factory=list, description="Why the frame is in the review queue")
    queued_at: UtcDatetime | None = Field(default=None, description="When it joined the review queue")
    review: Review | None = None
    revision: int = Field(default=0, ge=0, description="Raised by every change; guards concurrent reviews")
    labelled_at: UtcDatetime

    @model_validator(mode="after")
    def _status_matches_review(self) -> "Label":
        if (self.status == "reviewed") != (self.review is not None):
            raise ValueError("a label is 'reviewed' exactly when it holds a review")
        if self.status == "queued" and self.queued_at is None:
            raise ValueError("a queued label says when it was queued")
        return self

    @property
    def ground_truth(self) -> ReviewDecision | None:
        """What the part is, as far as a person has said: None until reviewed."""
        return self.review.decision if self.review is not None else None
