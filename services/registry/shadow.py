"""Shadow evaluation: a candidate model scores the frames the production model already inspected,
its verdicts are stored beside the registry entry (never in the records: nothing the line acted on
changes), and a comparison report supports the decision to promote it.

The report: how often the two agree (a verdict-by-verdict table), the score distributions of both
(quantiles of the normalised scores), and, on the frames a person reviewed, how each model did: false
alarms (NG on a frame confirmed good) and misses (OK on a frame confirmed defective).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from schemas.inspection import Inspection
from services.storage.ports import BlobStore, LabelStore, RecordStore
from services.storage.query import InspectionQuery
from services.vision.images import ImageError, decode_image
from services.vision.inspector import Inspector

QUANTILES = (0.5, 0.9, 0.99)


@dataclass
class ShadowVerdict:
    frame_id: str
    production_version: str
    production_verdict: str
    production_score: float
    candidate_verdict: str
    candidate_score: float
    candidate_score_raw: float
    truth: str | None  # a reviewer's decision: "good", "defect" or None


@dataclass
class ShadowReport:
    recipe: str
    candidate: str
    frames: int
    skipped: int  # frames whose image is gone from the blob store
    agreement: float
    table: dict[str, dict[str, int]]  # production verdict -> candidate verdict -> frames
    production_scores: dict[str, float]
    candidate_scores: dict[str, float]
    reviewed: int
    outcomes: dict[str, dict[str, int]]  # model -> false_alarms / misses / reviewed_good / reviewed_defect
    made_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def stored_inspections(
    records: RecordStore, recipe: str, since: datetime | None, until: datetime | None, limit: int
) -> Iterator[Inspection]:
    """The recipe's stored inspections in the window, newest first, at most ``limit``."""
    offset = 0
    while offset < limit:
        page = records.query_inspections(
            InspectionQuery(
                recipe=recipe,
                captured_from=since,
                captured_to=until,
                limit=min(1000, limit - offset),
                offset=offset,
            )
        )
        if not page:
            return
        yield from page
        offset += len(page)


def shadow_score(
    candidate: Inspector,
    inspections: Iterator[Inspection],
    blobs: BlobStore,
    labels: LabelStore | None,
    batch_size: int = 8,
) -> tuple[list[ShadowVerdict], int]:
    """The candidate's verdict on each inspection's stored frame, beside production's and any
    reviewer's decision; with how many frames had no image left."""
    verdicts: list[ShadowVerdict] = []
    skipped = 0
    batch: list[tuple[Inspection, np.ndarray]] = []

    def flush() -> None:
        if not batch:
            return
        predictions = candidate.predict([image for _, image in batch], batch_size=batch_size)
        for (inspection, _), prediction in zip(batch, predictions, strict=True):
            label = labels.get_label(inspection.frame_id) if labels is not None else None
            verdicts.append(
                ShadowVerdict(
                    frame_id=inspection.frame_id,
                    production_version=inspection.model_version,
                    production_verdict=inspection.verdict,
                    production_score=inspection.score,
                    candidate_verdict=prediction.verdict,
                    candidate_score=prediction.score,
                    candidate_score_raw=prediction.score_raw,
                    truth=label.ground_truth if label is not None else None,
                )
            )
        batch.clear()

    for inspection in inspections:
        if inspection.image is None or not blobs.exists(inspection.image.uri):
            skipped += 1
            continue
        try:
            image = decode_image(blobs.get(inspection.image.uri), inspection.image.uri)
        except (ImageError, FileNotFoundError):
            skipped += 1
            continue
        batch.append((inspection, image))
        if len(batch) >= batch_size:
            flush()
    flush()
    return verdicts, skipped


def compare(recipe: str, candidate: str, verdicts: list[ShadowVerdict], skipped: int) -> ShadowReport:
    """The comparison report of shadow verdicts (see the module docstring)."""
    table: dict[str, dict[str, int]] = {}
    for v in verdicts:
        row = table.setdefault(v.production_verdict, {})
        row[v.candidate_verdict] = row.get(v.candidate_verdict, 0) + 1
    agree = sum(1 for v in verdicts if v.production_verdict == v.candidate_verdict)

    def quantiles(values: list[float]) -> dict[str, float]:
        if not values:
            return {}
        return {f"q{round(q * 100)}": round(float(np.quantile(values, q)), 4) for q in QUANTILES}

    reviewed = [v for v in verdicts if v.truth is not None]
    outcomes: dict[str, dict[str, int]] = {}
    for model, verdict_of in (
        ("production", lambda v: v.production_verdict),
        ("candidate", lambda v: v.candidate_verdict),
    ):
        counts: Counter[str] = Counter()
        for v in reviewed:
            counts[f"reviewed_{v.truth}"] += 1
            if v.truth == "good" and verdict_of(v) == "NG":
                counts["false_alarms"] += 1
            if v.truth == "defect" and verdict_of(v) == "OK":
                counts["misses"] += 1
        outcomes[model] = {
            k: counts.get(k, 0) for k in ("false_alarms", "misses", "reviewed_good", "reviewed_defect")
        }
    return ShadowReport(
        recipe=recipe,
        candidate=candidate,
        frames=len(verdicts),
        skipped=skipped,
        agreement=round(agree / len(verdicts), 4) if verdicts else float("nan"),
        table=table,
        production_scores=quantiles([v.production_score for v in verdicts]),
        candidate_scores=quantiles([v.candidate_score for v in verdicts]),
        reviewed=len(reviewed),
        outcomes=outcomes,
    )


def save_shadow(folder: Path, verdicts: list[ShadowVerdict], report: ShadowReport) -> Path:
    """The verdicts (JSON lines) and the report beside the candidate's registry entry."""
    folder.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    path = folder / f"shadow-{stamp}.json"
    path.write_text(
        json.dumps({"report": report.as_json(), "verdicts": [asdict(v) for v in verdicts]}) + "\n"
    )
    return path


def live_verdicts(path: Path, labels: LabelStore | None) -> list[ShadowVerdict]:
    """The verdicts a live shadow wrote (:mod:`services.registry.live_shadow`), with reviewers'
    decisions where there are any; lines that cannot be read are skipped."""
    verdicts: list[ShadowVerdict] = []
    if not path.is_file():
        return verdicts
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
            label = labels.get_label(row["frame_id"]) if labels is not None else None
            verdicts.append(
                ShadowVerdict(
                    frame_id=row["frame_id"],
                    production_version=row["production_version"],
                    production_verdict=row["production_verdict"],
                    production_score=float(row["production_score"]),
                    candidate_verdict=row["candidate_verdict"],
                    candidate_score=float(row["candidate_score"]),
                    candidate_score_raw=float(row["candidate_score_raw"]),
                    truth=label.ground_truth if label is not None else None,
                )
            )
        except (ValueError, KeyError, TypeError):
            continue
    return verdicts
