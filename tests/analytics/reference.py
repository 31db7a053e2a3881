"""The analytics query model computed the slow, obvious way over a list of records: the reference
every store's aggregations are checked against."""

from __future__ import annotations

from collections import defaultdict

from schemas.inspection import Inspection
from services.storage.analytics_query import (
    AnalyticsQuery,
    Counts,
    GroupBy,
    GroupKey,
    ResultRow,
    bin_of,
    rows_from_counts,
)
from services.storage.query import InspectionQuery
from services.storage.sqlite_sql import from_us, to_us


def matches(record: Inspection, filters: InspectionQuery) -> bool:
    if filters.captured_from is not None and record.captured_at < filters.captured_from:
        return False
    if filters.captured_to is not None and record.captured_at >= filters.captured_to:
        return False
    for name in ("line_id", "camera_id", "recipe", "verdict"):
        wanted = getattr(filters, name)
        if wanted is not None and getattr(record, name) != wanted:
            return False
    defects = record.defects
    if filters.defect_location is not None and all(d.location != filters.defect_location for d in defects):
        return False
    if filters.severity is not None and all(d.severity != filters.severity for d in defects):
        return False
    if filters.cluster_id is not None and all(d.cluster_id != filters.cluster_id for d in defects):
        return False
    for name, (low, high) in filters.params.items():
        value = record.process.params.get(name)
        if value is None or (low is not None and value < low) or (high is not None and value > high):
            return False
    return True


def _keys(group: GroupBy, record: Inspection) -> list[GroupKey]:
    if group.kind == "time":
        assert group.interval_s is not None
        step = group.interval_s * 1_000_000
        return [from_us(to_us(record.captured_at) // step * step)]
    if group.kind == "param":
        assert group.param is not None
        value = record.process.params.get(group.param)
        return [] if value is None else [bin_of(group, value)]
    if group.kind == "defect":
        attribute = {"defect_location": "location"}.get(group.field, group.field)
        return sorted({getattr(d, attribute) for d in record.defects if getattr(d, attribute) is not None})
    if group.field == "process_status":
        return [record.process.status]
    return [getattr(record, group.field)]


def reference_aggregate(records: list[Inspection], query: AnalyticsQuery) -> list[ResultRow]:
    sums: dict[tuple[GroupKey, ...], list[float]] = defaultdict(lambda: [0, 0, 0.0, 0])
    for record in records:
        if not matches(record, query.filters):
            continue
        combos: list[tuple[GroupKey, ...]] = [()]
        for group in query.group_by:
            combos = [(*combo, key) for combo in combos for key in _keys(group, record)]
        for combo in combos:
            entry = sums[combo]
            entry[0] += 1
            entry[1] += record.verdict == "NG"
            entry[2] += record.score
            entry[3] += sum(d.area_px for d in record.defects)
    counts = {
        key: Counts(frames=int(f), ng=int(ng), score_sum=s, defect_area_sum=a)
        for key, (f, ng, s, a) in sums.items()
    }
    return rows_from_counts(query, counts)
