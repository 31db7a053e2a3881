"""The labelling step: inspections in, auto-labels (some queued for review) out to the label store.

It reads what the record store holds, so the embedded and the distributed line feed it alike
(``linewatch review sync``); a replay labels nothing twice (labels are keyed by frame id and a
stored label, reviewed or not, is never replaced).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from schemas.inspection import Inspection
from schemas.label import Label
from services.review.autolabel import auto_mask, label_of
from services.review.queue import LABELLED_VERDICTS, Candidate, ReviewSelector, within_budget
from services.storage.label_query import LabelQuery
from services.storage.ports import BlobStore, LabelStore


@dataclass
class LabelRun:
    """What one labelling pass did."""

    seen: int = 0  # inspections read
    labelled: int = 0  # new labels stored
    queued: int = 0  # of them, queued for review
    over_budget: int = 0  # frames the queue wanted but the day's budget had no room for
    already: int = 0  # frames that had a label before this pass

    def add(self, other: LabelRun) -> None:
        for field in ("seen", "labelled", "queued", "over_budget", "already"):
            setattr(self, field, getattr(self, field) + getattr(other, field))


def day_start(moment: datetime) -> datetime:
    """Midnight (UTC) of ``moment``'s day: the review budget is per UTC day."""
    return moment.replace(hour=0, minute=0, second=0, microsecond=0)


def label_inspections(
    inspections: Iterable[Inspection],
    labels: LabelStore,
    blobs: BlobStore | None,
    selector: ReviewSelector,
    now: datetime,
    actor: str = "linewatch",
) -> LabelRun:
    """Auto-label the NG and REVIEW inspections and queue the uncertain ones (OK frames included)
    within each line's daily budget; masks come from the heat maps in ``blobs`` (none without it)."""
    ordered = sorted(inspections, key=lambda i: (i.captured_at, i.frame_id))
    run = LabelRun(seen=len(ordered))
    candidates = [selector.consider(inspection) for inspection in ordered]
    wanted: list[Candidate] = []
    for candidate in candidates:
        if not candidate.reasons and candidate.inspection.verdict not in LABELLED_VERDICTS:
            continue
        if labels.get_label(candidate.inspection.frame_id) is not None:
            run.already += 1
            continue
        wanted.append(candidate)
    queued = _queued(wanted, labels, selector.policy.budget_per_day, now)
    run.over_budget = sum(1 for c in wanted if c.reasons) - len(queued)
    built: list[Label] = []
    for candidate in wanted:
        inspection = candidate.inspection
        if inspection.frame_id not in queued and inspection.verdict not in LABELLED_VERDICTS:
            continue
        mask = auto_mask(inspection, blobs) if blobs is not None else None
        reasons = candidate.reasons if inspection.frame_id in queued else ()
        built.append(label_of(inspection, mask, now, candidate.priority, reasons))
    run.labelled = labels.add_labels(built, actor=actor)
    run.queued = sum(1 for label in built if label.status == "queued")
    return run


def _queued(wanted: Sequence[Candidate], labels: LabelStore, budget: int, now: datetime) -> set[str]:
    by_line: dict[str, list[Candidate]] = defaultdict(list)
    for candidate in wanted:
        by_line[candidate.inspection.line_id].append(candidate)
    start = day_start(now)
    chosen: set[str] = set()
    for line_id, line_candidates in by_line.items():
        today = LabelQuery(line_id=line_id, queued_from=start, queued_to=start + timedelta(days=1))
        chosen |= within_budget(line_candidates, budget - labels.count_labels(today))
    return chosen
