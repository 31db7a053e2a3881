"""Analytics queries in SQL over the SQLite record store's layout (see ``sqlite_sql``)."""

from collections.abc import Callable
from typing import Any

from services.storage import sqlite_sql as sql
from services.storage.analytics_query import (
    AnalyticsQuery,
    Counts,
    GroupBy,
    GroupKey,
    ResultRow,
    rows_from_counts,
)
from services.storage.ports import ParamStats
from services.storage.query import InspectionQuery

Read = Callable[[str, list[object]], list[Any]]
_DEFECT_COLUMNS = {"defect_location": "location", "severity": "severity", "cluster_id": "cluster_id"}


def aggregate(read: Read, query: AnalyticsQuery) -> list[ResultRow]:
    joins: list[str] = []
    join_args: list[object] = []
    keys: list[str] = []
    key_args: list[object] = []
    for n, group in enumerate(query.group_by):
        if group.kind == "record":
            keys.append(f"i.{group.field}")
        elif group.kind == "defect":
            column = _DEFECT_COLUMNS[group.field]
            joins.append(
                f"JOIN (SELECT DISTINCT frame_id, {column} AS k FROM defects "
                f"WHERE {column} IS NOT NULL) g{n} ON g{n}.frame_id = i.frame_id"
            )
            keys.append(f"g{n}.k")
        elif group.kind == "time":
            keys.append("(i.captured_at_us / ?) * ?")
            key_args += [group.interval_s * 1_000_000, group.interval_s * 1_000_000]  # type: ignore[operator]
        else:
            joins.append(f"JOIN process_params g{n} ON g{n}.frame_id = i.frame_id AND g{n}.name = ?")
            join_args.append(group.param)
            if group.width is not None:
                keys.append(f"floor(g{n}.value / ?) * ?")
                key_args += [group.width, group.width]
            else:
                assert group.edges is not None
                cases = " ".join(f"WHEN g{n}.value < ? THEN {k}" for k in range(len(group.edges)))
                keys.append(f"CASE {cases} ELSE {len(group.edges)} END")
                key_args += list(group.edges)
    where, where_args = sql.where_clause(query.filters)
    select = [*keys, "COUNT(*)", "SUM(i.verdict = 'NG')", "SUM(i.score)", "SUM(i.defect_area_px)"]
    group_clause = f"GROUP BY {', '.join(str(k + 1) for k in range(len(keys)))}" if keys else ""
    statement = f"SELECT {', '.join(select)} FROM inspections i {' '.join(joins)} {where} {group_clause}"
    counts: dict[tuple[GroupKey, ...], Counts] = {}
    for row in read(statement, [*key_args, *join_args, *where_args]):
        raw, (frames, ng, score_sum, area_sum) = row[: len(keys)], row[len(keys) :]
        key = tuple(_key(group, value) for group, value in zip(query.group_by, raw, strict=True))
        counts[key] = Counts(
            frames=frames, ng=ng or 0, score_sum=score_sum or 0.0, defect_area_sum=area_sum or 0
        )
    return rows_from_counts(query, counts)


def _key(group: GroupBy, value: Any) -> GroupKey:
    if group.kind == "time":
        return sql.from_us(int(value))
    if group.kind == "param":
        if group.width is not None:
            return (float(value), float(value) + group.width)
        assert group.edges is not None
        edges = (None, *group.edges, None)
        return (edges[value], edges[value + 1])
    return int(value) if group.field == "cluster_id" else str(value)


def parameter_stats(read: Read, filters: InspectionQuery | None) -> dict[str, ParamStats]:
    where, args = sql.where_clause(filters or InspectionQuery())
    rows = read(
        "SELECT p.name, COUNT(*), MIN(p.value), MAX(p.value), AVG(p.value) "
        f"FROM inspections i JOIN process_params p ON p.frame_id = i.frame_id {where} GROUP BY p.name",
        args,
    )
    return {name: ParamStats(n, low, high, mean) for name, n, low, high, mean in rows}
