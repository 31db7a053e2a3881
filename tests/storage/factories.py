"""Small builders of valid records for the storage tests."""

from datetime import UTC, datetime, timedelta

from schemas.defect import Defect, DefectLocation
from schemas.ids import new_frame_id
from schemas.inspection import Inspection, Verdict
from schemas.label import Label
from schemas.process import ProcessSnapshot

T0 = datetime(2025, 3, 4, 8, 0, 0, tzinfo=UTC)


def make_defect(location: DefectLocation) -> Defect:
    return Defect.model_validate(
        {
            "bbox": {"x": 10, "y": 20, "width": 30, "height": 40},
            "area_px": 900,
            "area_share": 0.01,
            "max_score": 0.9,
            "mean_score": 0.7,
            "centroid": {"x": 25.0, "y": 40.0},
            "location": location,
            "severity": "major",
        }
    )


def make_inspection(
    *,
    at_s: float = 0.0,
    line_id: str = "press-line-1",
    camera_id: str = "cam-top",
    recipe: str = "bracket-a7",
    verdict: Verdict = "OK",
    locations: tuple[DefectLocation, ...] = (),
    params: dict[str, float] | None = None,
    frame_id: str | None = None,
) -> Inspection:
    """An inspection captured ``at_s`` seconds after T0; ``params=None`` means process data missing."""
    captured_at = T0 + timedelta(seconds=at_s)
    if params is None:
        process = ProcessSnapshot(status="missing")
    else:
        process = ProcessSnapshot(status="ok", params=params, sample_ts=captured_at, age_s=0.0)
    return Inspection(
        frame_id=frame_id or new_frame_id(),
        line_id=line_id,
        station_id="st-040",
        camera_id=camera_id,
        recipe=recipe,
        captured_at=captured_at,
        model_name="patchcore",
        model_version="1",
        score_raw=10.0,
        score=0.8 if verdict == "NG" else 0.2,
        verdict=verdict,
        defects=[make_defect(location) for location in locations],
        process=process,
        timings_ms={"infer": 12.5},
        inspected_at=captured_at + timedelta(milliseconds=50),
    )


def make_label(
    *,
    at_s: float = 0.0,
    verdict: Verdict = "NG",
    queued: bool = False,
    priority: float = 0.0,
    camera_id: str = "cam-top",
    recipe: str = "bracket-a7",
    frame_id: str | None = None,
    with_blobs: bool = False,
) -> Label:
    """The auto-label of an inspection captured ``at_s`` seconds after T0 (queued for review, with
    reason "test", when ``queued``)."""
    captured_at = T0 + timedelta(seconds=at_s)
    blob = {"uri": "sqlite-blob:" + "ab" * 32 + ".png", "sha256": "ab" * 32, "size_bytes": 812}
    blob |= {"encoding": "png", "width": 64, "height": 48}
    return Label.model_validate(
        {
            "frame_id": frame_id or new_frame_id(),
            "line_id": "press-line-1",
            "station_id": "st-040",
            "camera_id": camera_id,
            "recipe": recipe,
            "captured_at": captured_at,
            "model_name": "patchcore",
            "model_version": "1",
            "verdict": verdict,
            "score": 0.8 if verdict == "NG" else 0.45,
            "score_raw": 10.0,
            "defects": [make_defect("center").model_dump()] if with_blobs else [],
            "mask": blob if with_blobs else None,
            "heatmap": blob if with_blobs else None,
            "status": "queued" if queued else "auto",
            "priority": priority,
            "reasons": ["test"] if queued else [],
            "queued_at": captured_at + timedelta(seconds=1) if queued else None,
            "labelled_at": captured_at + timedelta(seconds=1),
        }
    )
