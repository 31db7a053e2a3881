"""Checked entry points shared by the CLI and the API: a query naming a process parameter no record
carries is refused with the parameters that are recorded, rather than answered with nothing."""

from __future__ import annotations

from pydantic import ValidationError

from services.analytics.causes import CauseReport, rank_causes
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
