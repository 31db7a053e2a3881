"""The line at a glance: NG rate over time, status per camera, dead letters and alerts."""

from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Query

from schemas.alert import Alert
from schemas.dead_letter import DeadLetter
from services.api.context import Context
from services.api.filters import FromParam, ToParam, build_query
from services.api.line_status import camera_statuses
from services.api.models import LineStatus, NgRatePoint, NgRateSeries

router = APIRouter(tags=["line"])

Limit = Annotated[int, Query(ge=1, le=1000)]


@router.get("/v1/ng-rate")
def ng_rate(
    context: Context,
    bucket_s: Annotated[int, Query(ge=1, le=31 * 24 * 3600, description="Bucket length in seconds")] = 60,
    line_id: str | None = None,
    camera_id: str | None = None,
    recipe: str | None = None,
    captured_from: FromParam = None,
    to: ToParam = None,
) -> NgRateSeries:
    """Inspections and NG verdicts per time bucket (aligned to the unix epoch), line and camera."""
    filters = build_query(
        captured_from=captured_from, captured_to=to, line_id=line_id, camera_id=camera_id, recipe=recipe
    )
    points = [
        NgRatePoint(**row._asdict(), ng_rate=row.ng / row.total if row.total else 0.0)
        for row in context.records.ng_rate(bucket_s, filters)
    ]
    return NgRateSeries(bucket_s=bucket_s, points=points)


@router.get("/v1/status")
def line_status(
    context: Context,
    window_min: Annotated[int, Query(ge=1, le=24 * 60, description="NG rate over the last N minutes")] = 10,
    lookback_h: Annotated[int, Query(ge=1, le=24 * 31, description="Cameras seen in the last N hours")] = 24,
) -> LineStatus:
    """Per line and camera: the last frame, frames and NG rate over the window; the line's own status."""
    now = datetime.now(UTC)
    cameras = camera_statuses(
        context.records, now, timedelta(minutes=window_min), timedelta(hours=lookback_h)
    )
    line = context.line_status() if context.line_status else None
    return LineStatus(generated_at=now, window_min=window_min, cameras=cameras, line=line)


@router.get("/v1/dead-letters")
def dead_letters(context: Context, limit: Limit = 100) -> list[DeadLetter]:
    """Input that could not be used, newest first, with the reason."""
    return context.records.list_dead_letters(limit)


@router.get("/v1/alerts")
def alerts(context: Context, limit: Limit = 100) -> list[Alert]:
    """Alerts raised by the line's monitors, newest first."""
    return context.records.list_alerts(limit)
