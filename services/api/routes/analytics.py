"""Plant analytics over HTTP: the typed query and the root-cause ranking (the same code as the CLI)."""

from typing import Any, cast

from fastapi import APIRouter, HTTPException, status
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.analytics.run import query_error_message, report_json, row_json, run_causes, run_query
from services.api.context import Context
from services.storage.analytics_query import AnalyticsQuery, QueryError
from services.storage.ports import AnalyticsStore
from services.storage.query import InspectionQuery

router = APIRouter(tags=["analytics"])


class CausesRequest(BaseModel):
    """Which frames to look at, and what to explain (default: an NG verdict)."""

    model_config = ConfigDict(extra="forbid")

    filters: InspectionQuery = Field(default_factory=InspectionQuery)
    outcome: InspectionQuery | None = Field(
        default=None,
        description='One of verdict, defect_location, severity, cluster_id, e.g. {"severity": "critical"}',
    )


def _analytics(context: Context) -> AnalyticsStore:
    if not hasattr(context.records, "aggregate"):
        raise HTTPException(status.HTTP_501_NOT_IMPLEMENTED, "this record store cannot answer analytics")
    return cast(AnalyticsStore, context.records)


def _unprocessable(err: QueryError | ValidationError) -> HTTPException:
    return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, query_error_message(err))


@router.post("/v1/analytics/query", responses={422: {"description": "Unknown field or parameter, bad bins"}})
def analytics_query(context: Context, query: AnalyticsQuery) -> dict[str, Any]:
    """Frames, NG, NG rate, mean score and defect area per group (fields, defect fields, time buckets,
    process-parameter bins); the same numbers on every record store."""
    store = _analytics(context)
    try:
        rows = run_query(store, query)
    except QueryError as err:
        raise _unprocessable(err) from None
    return {"group_by": [g.field for g in query.group_by], "rows": [row_json(query, row) for row in rows]}


@router.post("/v1/analytics/causes", responses={422: {"description": "Unknown parameter, bad outcome"}})
def analytics_causes(context: Context, request: CausesRequest) -> dict[str, Any]:
    """The process parameters and ranges that best separate the outcome, strongest first, each
    re-measured with the other candidates held fixed."""
    store = _analytics(context)
    try:
        report = run_causes(store, request.filters, request.outcome)
    except (QueryError, ValidationError) as err:
        raise _unprocessable(err) from None
    return report_json(report)
