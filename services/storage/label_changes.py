"""The changes a label store makes, computed once for every adapter: the first history entry of a
new label and the new label plus history entry of a review. Adapters only store what these return."""

from __future__ import annotations

from typing import Any

from schemas.label import Label, LabelAction, LabelEvent, Review


def first_event(label: Label, actor: str) -> LabelEvent:
    """The history entry of a label's arrival: auto-labelled, or queued with its reasons."""
    changes: dict[str, list[Any]] = {"status": [None, label.status], "verdict": [None, label.verdict]}
    if label.status == "queued":
        changes["reasons"] = [None, list(label.reasons)]
        changes["priority"] = [None, label.priority]
    action: LabelAction = "queued" if label.status == "queued" else "auto-labelled"
    return LabelEvent(
        frame_id=label.frame_id, at=label.labelled_at, actor=actor, action=action, changes=changes
    )


def reviewed(label: Label, review: Review) -> tuple[Label, LabelEvent]:
    """The label after ``review``, and the history entry that says who changed what."""
    before = label.review.model_dump(mode="json") if label.review is not None else {}
    after = review.model_dump(mode="json")
    changes: dict[str, list[Any]] = (
        {"status": [label.status, "reviewed"]} if label.status != "reviewed" else {}
    )
    for field in ("decision", "defect_class", "mask", "note"):
        if before.get(field) != after.get(field):
            changes[field] = [before.get(field), after.get(field)]
    new = label.model_copy(update={"status": "reviewed", "review": review, "revision": label.revision + 1})
    event = LabelEvent(
        frame_id=label.frame_id,
        at=review.reviewed_at,
        actor=review.reviewer,
        action="reviewed",
        changes=changes,
    )
    return new, event
