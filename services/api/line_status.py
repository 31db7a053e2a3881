"""Per line and camera: the last frame, and frames and NG rate over a recent window."""

from datetime import datetime, timedelta

from services.api.models import CameraStatus
from services.storage.ports import RecordStore
from services.storage.query import InspectionQuery


def camera_statuses(
    records: RecordStore, now: datetime, window: timedelta, lookback: timedelta
) -> list[CameraStatus]:
    """One entry for every camera that sent a frame since ``now - lookback``, sorted by line and camera.

    A camera with no frame in ``window`` still shows up, with zero frames: a silent camera is news.
    """
    seen = records.ng_rate(int(lookback.total_seconds()), InspectionQuery(captured_from=now - lookback))
    cameras = sorted({(row.line_id, row.camera_id) for row in seen})
    recent = records.ng_rate(int(window.total_seconds()), InspectionQuery(captured_from=now - window))
    frames: dict[tuple[str, str], int] = {}
    ngs: dict[tuple[str, str], int] = {}
    for row in recent:  # the window spans at most two epoch-aligned buckets
        key = (row.line_id, row.camera_id)
        frames[key] = frames.get(key, 0) + row.total
        ngs[key] = ngs.get(key, 0) + row.ng
    statuses = []
    for line_id, camera_id in cameras:
        last = records.query_inspections(InspectionQuery(line_id=line_id, camera_id=camera_id, limit=1))
        total, ng = frames.get((line_id, camera_id), 0), ngs.get((line_id, camera_id), 0)
        statuses.append(
            CameraStatus(
                line_id=line_id,
                camera_id=camera_id,
                last_frame_at=last[0].captured_at if last else None,
                last_verdict=last[0].verdict if last else None,
                frames=total,
                ng=ng,
                ng_rate=ng / total if total else None,
            )
        )
    return statuses
