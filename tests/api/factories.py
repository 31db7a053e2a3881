"""Records for the API tests: inspections with a stored heat map, dead letters, alerts."""

from datetime import UTC, datetime, timedelta

import numpy as np

from schemas.alert import Alert
from schemas.blob import BlobRef
from schemas.defect import Defect, DefectLocation
from schemas.ids import new_frame_id, new_uuid7
from schemas.inspection import Inspection, Verdict
from schemas.process import ProcessSnapshot
from services.storage.ports import BlobStore
from services.vision.overlay import encode_heatmap, encode_png

T0 = datetime(2025, 3, 4, 8, 0, 0, tzinfo=UTC)
FRAME_HW = (96, 128)
WARM_BOX = (40, 24, 32, 32)  # x, y, width, height: where the stored heat maps are warm


def store_frame(blobs: BlobStore, seed: int = 0) -> BlobRef:
    """A stored frame PNG of random pixels."""
    height, width = FRAME_HW
    pixels = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
    return blobs.put(encode_png(pixels), "png", width, height)


def store_heatmap(blobs: BlobStore) -> BlobRef:
    """A stored heat map of a ``FRAME_HW`` frame: cold, and warm (0.9) inside ``WARM_BOX``."""
    score_map = np.zeros(FRAME_HW, np.float32)
    x, y, w, h = WARM_BOX
    score_map[y : y + h, x : x + w] = 0.9
    data, width, height = encode_heatmap(score_map, FRAME_HW)
    return blobs.put(data, "png", width, height)


def make_defect(location: DefectLocation, defect_class: str | None = None) -> Defect:
    return Defect.model_validate(
        {
            "bbox": {"x": 40, "y": 24, "width": 32, "height": 32},
            "area_px": 900,
            "area_share": 0.01,
            "max_score": 0.9,
            "mean_score": 0.7,
            "centroid": {"x": 56.0, "y": 40.0},
            "location": location,
            "severity": "major",
            "defect_class": defect_class,
        }
    )


def make_inspection(
    blobs: BlobStore | None = None,
    *,
    at: datetime = T0,
    line_id: str = "press-line-1",
    camera_id: str = "cam-top",
    recipe: str = "housing-A",
    verdict: Verdict = "OK",
    locations: tuple[DefectLocation, ...] = (),
    params: dict[str, float] | None = None,
    part_id: str | None = None,
) -> Inspection:
    """An inspection captured ``at``; with ``blobs`` it gets a stored frame and heat map. No params: process
    missing."""
    image = store_frame(blobs, seed=int(at.timestamp()) % 1000) if blobs is not None else None
    heatmap = store_heatmap(blobs) if blobs is not None else None
    if params is None:
        process = ProcessSnapshot(status="missing")
    else:
        process = ProcessSnapshot(status="ok", params=params, sample_ts=at, age_s=0.4, machine_id="imm-1")
    return Inspection(
        frame_id=new_frame_id(),
        line_id=line_id,
        station_id="station-1",
        camera_id=camera_id,
        part_id=part_id,
        recipe=recipe,
        captured_at=at,
        model_name="patchcore-housing-a",
        model_version="1",
        score_raw=12.0,
        score=0.8 if verdict == "NG" else 0.2,
        verdict=verdict,
        defects=[make_defect(location) for location in locations],
        image=image,
        heatmap=heatmap,
        embedding=[0.1, 0.2, 0.3],
        process=process,
        timings_ms={"decode": 2.0, "infer": 12.5},
        inspected_at=at + timedelta(milliseconds=50),
    )


def make_alert(line_id: str = "press-line-1", at: datetime = T0) -> Alert:
    return Alert(
        alert_id=new_uuid7(),
        line_id=line_id,
        camera_id="cam-top",
        kind="ng_rate",
        severity="warning",
        message="NG rate 8% over the last 10 min (limit 3%)",
        raised_at=at,
    )
