"""Finishing a detected batch: each frame's defects as records, its heat map stored, its record built.

Needs nothing of the model: what :class:`~services.steps.detect.Detected` carries (predictions,
heat map levels, the model's name and version) and the frames' own records are enough, so a batch
scored in another process or on a Triton server is finished the same way as one scored here.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

import numpy as np

from schemas.blob import BlobRef
from schemas.defect import BoundingBox, Defect, Point
from schemas.frame import Frame
from schemas.inspection import Inspection
from schemas.process import ProcessSnapshot
from services.steps.admit import elapsed_ms
from services.steps.detect import Detected
from services.storage.ports import BlobStore
from services.vision.defects import DefectRegion
from services.vision.inspector import Prediction
from services.vision.overlay import encode_levels

MISSING_PROCESS = ProcessSnapshot(status="missing")


def to_defect(region: DefectRegion) -> Defect:
    x, y, width, height = region.bbox
    cx, cy = region.centroid
    return Defect(
        bbox=BoundingBox(x=max(0, x), y=max(0, y), width=width, height=height),
        area_px=region.area_px,
        area_share=min(1.0, region.area_share),
        max_score=region.max_score,
        mean_score=min(region.mean_score, region.max_score),
        centroid=Point(x=cx, y=cy),
        location=region.location,  # type: ignore[arg-type]  # find_defects only returns grid names
        severity=region.severity,  # type: ignore[arg-type]
        embedding=list(region.embedding),
    )


def postprocess(prediction: Prediction) -> list[Defect]:
    """The prediction's defect regions as :class:`Defect` records, most severe first."""
    return [to_defect(region) for region in prediction.defects]


def store_heatmap(blobs: BlobStore, levels: np.ndarray) -> BlobRef:
    """Store a frame's heat map (its levels as a small grayscale PNG, see
    :func:`services.vision.overlay.heatmap_levels`); raises BlobStoreFull."""
    data, width, height = encode_levels(levels)
    return blobs.put(data, "png", width, height)


def build_inspection(
    frame: Frame,
    detected: Detected,
    prediction: Prediction,
    defects: list[Defect],
    heatmap: BlobRef | None,
    process: ProcessSnapshot,
    timings_ms: Mapping[str, float],
) -> Inspection:
    """The record stored for one inspected frame; a camera with thresholds of its own (the card's
    ``cameras``) grades its frames by them."""
    score, verdict = prediction.score, prediction.verdict
    own = detected.cameras.get(frame.camera_id)
    if own is not None:
        score, verdict = own.grade(prediction.score_raw)
    return Inspection(
        frame_id=frame.frame_id,
        line_id=frame.line_id,
        station_id=frame.station_id,
        camera_id=frame.camera_id,
        part_id=frame.part_id,
        recipe=frame.recipe,
        captured_at=frame.captured_at,
        model_name=detected.model_name,
        model_version=detected.model_version,
        score_raw=prediction.score_raw,
        score=float(np.clip(score, 0.0, 1.0)),
        verdict=verdict,  # type: ignore[arg-type]  # OK, REVIEW or NG
        defects=defects,
        image=frame.image,
        heatmap=heatmap,
        embedding=[float(v) for v in prediction.embedding],
        member_scores=dict(prediction.member_scores),
        process=process,
        timings_ms={name: round(ms, 3) for name, ms in timings_ms.items()},
        inspected_at=datetime.now(UTC),
    )


def finish_batch(
    frames: Sequence[Frame],
    detected: Detected,
    blobs: BlobStore,
    process: Sequence[ProcessSnapshot] | None = None,
    *,
    timings_ms: Sequence[Mapping[str, float]] | None = None,
) -> list[Inspection]:
    """The records of a detected batch: defects as records, heat maps stored, each record built.

    ``process`` holds the snapshot joined to each frame (``missing`` for all when None);
    ``timings_ms`` the times of earlier steps per frame (e.g. decode), merged into each record.
    Raises ``BlobStoreFull`` when a heat map cannot be stored: no record is built then.
    """
    if len(frames) != len(detected.predictions):
        raise ValueError(f"{len(frames)} frames but {len(detected.predictions)} predictions")
    if process is not None and len(process) != len(frames):
        raise ValueError(f"{len(frames)} frames but {len(process)} process snapshots")
    records = []
    for i, (frame, prediction) in enumerate(zip(frames, detected.predictions, strict=True)):
        start = time.perf_counter()
        defects = postprocess(prediction)
        postprocess_ms = elapsed_ms(start)
        start = time.perf_counter()
        heatmap = store_heatmap(blobs, detected.heatmaps[i])
        timings = dict(timings_ms[i]) if timings_ms is not None else {}
        timings |= detected.timings_ms | {"postprocess": postprocess_ms, "heatmap": elapsed_ms(start)}
        snapshot = process[i] if process is not None else MISSING_PROCESS
        records.append(build_inspection(frame, detected, prediction, defects, heatmap, snapshot, timings))
    return records
