"""One camera's thresholds from its recent good frames (``linewatch calibrate --camera``).

A camera can see parts differently from the others (light, angle, lens): a threshold set on the
training images may be too tight or too loose for it. Its recent frames scored by the same model
tell: the good ones are the frames the model called OK that no reviewer called defective, and the
NG or REVIEW frames a reviewer confirmed good. Frames confirmed defective are left out, and so are
NG or REVIEW frames nobody reviewed (their truth is unknown): leaving them out lowers the high end
of the good scores, so review the queue first; the command says how many it left out.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np

from services.storage.label_query import LabelQuery
from services.storage.ports import LabelStore, RecordStore
from services.storage.query import InspectionQuery
from services.vision.artifact import ModelCard
from services.vision.calibration import fit_threshold
from services.vision.operating import CameraCalibration, review_band

MIN_CAMERA_GOODS = 50


@dataclass
class CameraGoods:
    scores: list[float]  # raw image scores of the good frames
    confirmed_good: int  # of them, NG or REVIEW frames a person confirmed good
    confirmed_defects: int  # frames confirmed defective (left out)
    unreviewed: int  # NG or REVIEW frames nobody reviewed (left out)


def camera_goods(
    records: RecordStore, labels: LabelStore, card: ModelCard, camera_id: str, since: datetime
) -> CameraGoods:
    """The good frames' scores of ``camera_id`` since ``since``, scored by the card's model version."""
    reviewed: dict[str, str | None] = {}
    offset = 0
    while True:
        query = LabelQuery(
            camera_id=camera_id, status="reviewed", captured_from=since, limit=1000, offset=offset
        )
        page = labels.query_labels(query)
        if not page:
            break
        offset += len(page)
        reviewed.update((label.frame_id, label.ground_truth) for label in page)
    scores: list[float] = []
    counts = {"good": 0, "defect": 0, "unreviewed": 0}
    offset = 0
    while True:
        page_records = records.query_inspections(
            InspectionQuery(camera_id=camera_id, captured_from=since, limit=1000, offset=offset)
        )
        if not page_records:
            break
        offset += len(page_records)
        for inspection in page_records:
            if inspection.model_version != card.version:
                continue
            truth = reviewed.get(inspection.frame_id)
            if truth == "defect":
                counts["defect"] += 1
            elif truth == "good":
                scores.append(inspection.score_raw)
                counts["good"] += inspection.verdict != "OK"
            elif inspection.verdict == "OK":
                scores.append(inspection.score_raw)
            else:
                counts["unreviewed"] += 1
    return CameraGoods(scores, counts["good"], counts["defect"], counts["unreviewed"])


def calibrate_camera(
    card: ModelCard,
    goods: CameraGoods,
    target_fpr: float,
    review_fpr: float | None,
    since: datetime,
    now: datetime,
) -> CameraCalibration:
    """The camera's NG threshold (at most ``target_fpr`` of its good frames above it, with the
    card's confidence) and REVIEW band; ValueError with fewer than :data:`MIN_CAMERA_GOODS` goods."""
    if len(goods.scores) < MIN_CAMERA_GOODS:
        raise ValueError(
            f"{len(goods.scores)} good frames of this camera scored by {card.version},"
            f" {MIN_CAMERA_GOODS} needed"
        )
    values = np.asarray(goods.scores)
    confidence = card.image_calibration.confidence
    fitted = fit_threshold(values, target_fpr, confidence)
    band = review_band(values, fitted.threshold, review_fpr, confidence)
    return CameraCalibration(
        image_calibration=fitted,
        review=band,
        n_goods=len(goods.scores),
        left_out=goods.unreviewed,
        since=since.isoformat(),
        calibrated_at=now.isoformat(),
    )
