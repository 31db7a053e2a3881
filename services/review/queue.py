"""The review queue: which inspected frames a person should look at, within a daily budget.

Uncertainty sampling: a frame is worth a person's time when the model is unsure of it, or when it is
unlike what the model has seen. Each reason adds to the frame's priority:

- **review band** (+1): the verdict is REVIEW, the model's own "unsure";
- **near the NG threshold** (up to +1): the normalised score lies within ``near_band`` of 0.5 (the NG
  threshold), on either side: an OK frame just below it is where misses hide;
- **ensemble members disagree** (+0.75): one member of an ensemble scores the frame above its own
  threshold and another below (the inspection's ``member_scores`` straddle 0);
- **rare defect class** (+0.5): one of its defects has a class or cluster seen fewer than
  ``rare_below`` times among the last ``window`` labelled defects;
- **unusual latency** (+0.25): its processing took more than ``latency_factor`` times the median of
  the last ``window`` frames (a frame the pipeline struggled with: odd size, odd content).

Frames with no reason are not queued. At most ``budget_per_day`` frames join the queue per line and
UTC day; when a batch offers more than the budget has left, the highest priorities are taken. Each
NG or REVIEW frame is auto-labelled whether or not it is queued; OK frames are labelled only when
queued.
"""

from __future__ import annotations

import statistics
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass

from schemas.inspection import SCORE_THRESHOLD, Inspection

LABELLED_VERDICTS = ("NG", "REVIEW")  # always auto-labelled; OK frames only when queued


@dataclass(frozen=True)
class ReviewPolicy:
    """The review queue's settings (see the module docstring)."""

    budget_per_day: int = 200
    near_band: float = 0.1
    rare_below: int = 3
    latency_factor: float = 3.0
    window: int = 1000
    min_history: int = 50  # frames seen before latency or rarity can be judged

    def __post_init__(self) -> None:
        if self.budget_per_day < 0:
            raise ValueError(f"the daily review budget must be 0 or more, got {self.budget_per_day}")
        if not 0 <= self.near_band <= 0.5:
            raise ValueError(f"near_band is a distance in normalised score, 0..0.5; got {self.near_band}")
        if self.latency_factor <= 1 or self.window < 1 or self.rare_below < 0 or self.min_history < 1:
            raise ValueError("latency_factor must exceed 1; window and min_history be positive")


@dataclass(frozen=True)
class Candidate:
    """One inspection with the priority and reasons the queue gives it (no reasons: not queued)."""

    inspection: Inspection
    priority: float
    reasons: tuple[str, ...]


class ReviewSelector:
    """Scores inspections for the review queue, remembering recent latencies and defect classes."""

    def __init__(self, policy: ReviewPolicy | None = None) -> None:
        self.policy = policy or ReviewPolicy()
        self._latencies: deque[float] = deque(maxlen=self.policy.window)
        self._kinds: deque[str] = deque(maxlen=self.policy.window)

    def consider(self, inspection: Inspection) -> Candidate:
        """The inspection's priority and reasons; then it joins the remembered history."""
        policy = self.policy
        reasons: list[str] = []
        priority = 0.0
        if inspection.verdict == "REVIEW":
            reasons.append("review band")
            priority += 1.0
        distance = abs(inspection.score - SCORE_THRESHOLD)
        if policy.near_band > 0 and distance < policy.near_band:
            reasons.append("score near the NG threshold")
            priority += 1.0 - distance / policy.near_band
        members = list(inspection.member_scores.values())
        if len(members) >= 2 and max(members) >= 0 > min(members):
            reasons.append("ensemble members disagree")
            priority += 0.75
        kinds = [
            kind for defect in inspection.defects if (kind := _kind(defect.defect_class, defect.cluster_id))
        ]
        if kinds and len(self._kinds) >= policy.min_history:
            seen = Counter(self._kinds)
            if any(seen[kind] < policy.rare_below for kind in kinds):
                reasons.append("rare defect class")
                priority += 0.5
        latency = sum(inspection.timings_ms.values())
        judged = latency > 0 and len(self._latencies) >= policy.min_history
        if judged and latency > policy.latency_factor * statistics.median(self._latencies):
            reasons.append("unusual latency")
            priority += 0.25
        if latency > 0:
            self._latencies.append(latency)
        self._kinds.extend(kinds)
        return Candidate(inspection, priority, tuple(reasons))


def _kind(defect_class: str | None, cluster_id: int | None) -> str | None:
    if defect_class is not None:
        return f"class:{defect_class}"
    return f"cluster:{cluster_id}" if cluster_id is not None else None


def within_budget(candidates: Sequence[Candidate], left: int) -> set[str]:
    """The frame ids of the queued candidates that fit in ``left`` places: highest priority first,
    the earlier captured first among equals."""
    wanting = [c for c in candidates if c.reasons]
    wanting.sort(key=lambda c: (-c.priority, c.inspection.captured_at, c.inspection.frame_id))
    return {c.inspection.frame_id for c in wanting[: max(0, left)]}
