"""Checked entry points shared by the CLI and the API: a query naming a process parameter no record
carries is refused with the parameters that are recorded, rather than answered with nothing."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import ValidationError

from services.analytics.causes import Cause, CauseReport, rank_causes
from services.storage.analytics_query import AnalyticsQuery, QueryError, ResultRow
from services.storage.ports import AnalyticsStore
from services.storage.query import InspectionQuery


def check_params(store: AnalyticsStore, names: set[str]) -> None:
    """QueryError when a name is not a recorded process parameter."""
    if not names:
        return
    known = set(store.parameter_stats())
    unknown = sorted(names - known)
    if unknown:
        listed = ", ".join(sorted(known)) or "none yet"
        raise QueryError(f"unknown process parameter {', '.join(map(repr, unknown))}; recorded: {listed}")


def run_query(store: AnalyticsStore, query: AnalyticsQuery) -> list[ResultRow]:
    check_params(store, query.params_named())
    return store.aggregate(query)


def run_causes(
    store: AnalyticsStore, filters: InspectionQuery, outcome: InspectionQuery | None = None
) -> CauseReport:
    check_params(store, set(filters.params))
    return rank_causes(store, filters, outcome)


def query_error_message(err: ValidationError | QueryError) -> str:
    """One line per problem, without pydantic's URLs."""
    if isinstance(err, QueryError):
        return str(err)
    return "; ".join(
        (f"{'.'.join(map(str, e['loc']))}: " if e["loc"] else "") + e["msg"].removeprefix("Value error, ")
        for e in err.errors()
    )


def row_json(query: AnalyticsQuery, row: ResultRow) -> dict[str, Any]:
    """One result row as JSON: each group under its field name (a bin as from/to), then the measures."""
    out: dict[str, Any] = {}
    for group, key in zip(query.group_by, row.keys, strict=True):
        if isinstance(key, tuple):
            out[group.field] = {"from": key[0], "to": key[1]}
        elif isinstance(key, datetime):
            out[group.field] = key.isoformat().replace("+00:00", "Z")
        else:
            out[group.field] = key
    return {**out, **row.values}


def cause_json(cause: Cause, outcome: str) -> dict[str, Any]:
    return {
        "param": cause.param,
        "range": {"side": cause.side, "threshold": cause.threshold},
        "status": cause.status,
        "frames_in": cause.frames_in,
        "hits_in": cause.hits_in,
        "rate_in": cause.rate_in,
        "frames_out": cause.frames_out,
        "hits_out": cause.hits_out,
        "rate_out": cause.rate_out,
        "rate_ratio": cause.rate_ratio,
        "rate_ratio_ci95": list(cause.rate_ratio_ci),
        "p_value": cause.p_value,
        "adjusted_for": cause.adjusted_for,
        "adjusted_odds_ratio": cause.adjusted_odds_ratio,
        "adjusted_odds_ratio_ci95": list(cause.adjusted_ci) if cause.adjusted_ci else None,
        "adjusted_p_value": cause.adjusted_p,
        "explained_by": cause.explained_by,
        "levels": list(cause.levels),
        "sentence": cause.sentence(outcome),
    }


def report_json(report: CauseReport) -> dict[str, Any]:
    return {
        "outcome": report.outcome,
        "frames": report.frames,
        "hits": report.hits,
        "base_rate": report.base_rate,
        "causes": [cause_json(cause, report.outcome) for cause in report.causes],
        "skipped": report.skipped,
    }
