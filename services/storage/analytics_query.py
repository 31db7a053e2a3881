"""The typed query model of plant analytics: filters, groups and measures over inspections.

One :class:`AnalyticsQuery` runs on every record store that speaks :class:`AnalyticsStore`
(SQLite in SQL, Elasticsearch as aggregations) and gives the same numbers on the same data.

Groups:

* a record field: ``line_id``, ``camera_id``, ``recipe``, ``verdict``, ``process_status``;
* a defect field: ``defect_location``, ``severity``, ``cluster_id``. A frame counts once in every
  group it has a defect of, and frames without defects are in none of them;
* ``time``: buckets of ``interval_s`` seconds aligned to the unix epoch (UTC);
* a process parameter, ``param:NAME``: bins of ``width`` aligned to 0 (``[k·w, (k+1)·w)``), or
  the ranges between explicit ``edges`` (``[-inf, e0), [e0, e1), …, [en, inf)``). Frames without
  the parameter are in no bin.

Measures, per group: frames, NG frames, NG rate, mean normalised score and mean total defect area
(pixels; frames without defects count as 0). Only groups with at least one frame are returned.
"""

from __future__ import annotations

import itertools
import math
from datetime import datetime
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from services.storage.query import InspectionQuery

RECORD_FIELDS = ("line_id", "camera_id", "recipe", "verdict", "process_status")
DEFECT_FIELDS = ("defect_location", "severity", "cluster_id")
PARAM_PREFIX = "param:"
MAX_GROUPS = 2
MAX_EDGES = 200

Measure = Literal["frames", "ng", "ng_rate", "mean_score", "mean_defect_area_px"]
MEASURES: tuple[Measure, ...] = ("frames", "ng", "ng_rate", "mean_score", "mean_defect_area_px")


class QueryError(ValueError):
    """A query that cannot run: an unknown field or parameter, a bad range or bin. The message
    says what is wrong and what would be accepted (the CLI exits 2, the API answers 422)."""


class GroupBy(BaseModel):
    """One grouping: a field name, ``time`` (with ``interval_s``) or ``param:NAME`` (with ``width``
    or ``edges``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    field: str = Field(min_length=1)
    interval_s: int | None = Field(default=None, gt=0)
    width: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    edges: tuple[float, ...] | None = Field(default=None, min_length=1, max_length=MAX_EDGES)

    @property
    def param(self) -> str | None:
        """The process parameter's name when grouping by one."""
        return self.field.removeprefix(PARAM_PREFIX) if self.field.startswith(PARAM_PREFIX) else None

    @property
    def kind(self) -> Literal["record", "defect", "time", "param"]:
        if self.field == "time":
            return "time"
        if self.param is not None:
            return "param"
        return "defect" if self.field in DEFECT_FIELDS else "record"

    @model_validator(mode="after")
    def _complete(self) -> Self:
        known = (*RECORD_FIELDS, *DEFECT_FIELDS, "time")
        if self.param is None and self.field not in known:
            raise QueryError(
                f"unknown group field {self.field!r}; known: {', '.join(known)}, or param:NAME for a "
                "process parameter"
            )
        if self.param == "":
            raise QueryError("param: needs a process parameter name, e.g. param:mould_temp_c")
        if self.kind == "time" and self.interval_s is None:
            raise QueryError("grouping by time needs interval_s (seconds per bucket)")
        if self.kind == "param":
            if (self.width is None) == (self.edges is None):
                raise QueryError(f"grouping by {self.field} needs either a bin width or bin edges")
            if self.edges is not None:
                if any(not math.isfinite(e) for e in self.edges):
                    raise QueryError(f"bin edges of {self.field} must be finite numbers")
                if list(self.edges) != sorted(set(self.edges)):
                    raise QueryError(f"bin edges of {self.field} must be strictly increasing")
        elif self.width is not None or self.edges is not None:
            raise QueryError(f"bin width and edges apply to process parameters, not to {self.field}")
        if self.kind != "time" and self.interval_s is not None:
            raise QueryError(f"interval_s applies to time, not to {self.field}")
        return self


class AnalyticsQuery(BaseModel):
    """Filters (an :class:`InspectionQuery`; its paging is ignored), up to two groupings, measures."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    filters: InspectionQuery = Field(default_factory=InspectionQuery)
    group_by: tuple[GroupBy, ...] = Field(default=(), max_length=MAX_GROUPS)
    measures: tuple[Measure, ...] = MEASURES

    @model_validator(mode="after")
    def _one_defect_group(self) -> Self:
        if sum(group.kind == "defect" for group in self.group_by) > 1:
            raise QueryError("group by at most one defect field (defect_location, severity or cluster_id)")
        if len({group.field for group in self.group_by}) < len(self.group_by):
            raise QueryError("the same field is grouped twice")
        if not self.measures:
            raise QueryError(f"ask for at least one measure: {', '.join(MEASURES)}")
        return self

    def params_named(self) -> set[str]:
        """Every process parameter the query names (in its filters or groups)."""
        return set(self.filters.params) | {g.param for g in self.group_by if g.param is not None}


Bin = tuple[float | None, float | None]
"""A parameter bin ``[low, high)``; None for an open end."""

GroupKey = str | int | datetime | Bin


class Counts(BaseModel):
    """The sums behind the measures of one group."""

    model_config = ConfigDict(frozen=True)

    frames: int
    ng: int
    score_sum: float
    defect_area_sum: float

    def measures(self) -> dict[str, float | int | None]:
        frames = self.frames
        return {
            "frames": frames,
            "ng": self.ng,
            "ng_rate": self.ng / frames if frames else None,
            "mean_score": self.score_sum / frames if frames else None,
            "mean_defect_area_px": self.defect_area_sum / frames if frames else None,
        }


class ResultRow(BaseModel):
    """One group: its keys (in the order of ``group_by``) and the measures asked for."""

    model_config = ConfigDict(frozen=True)

    keys: tuple[GroupKey, ...]
    values: dict[str, float | int | None]


def bin_of(group: GroupBy, value: float) -> Bin:
    """The bin of a parameter value under ``group``'s width or edges (the stores' reference)."""
    if group.width is not None:
        low = math.floor(value / group.width) * group.width
        return (low, low + group.width)
    assert group.edges is not None
    edges = group.edges
    if value < edges[0]:
        return (None, edges[0])
    for low, high in itertools.pairwise(edges):
        if low <= value < high:
            return (low, high)
    return (edges[-1], None)


def rows_from_counts(query: AnalyticsQuery, counts: dict[tuple[GroupKey, ...], Counts]) -> list[ResultRow]:
    """Result rows, sorted by their keys, from each group's counts (groups with no frame dropped)."""
    rows = []
    for keys in sorted(counts, key=_sort_key):
        if counts[keys].frames == 0:
            continue
        everything = counts[keys].measures()
        rows.append(ResultRow(keys=keys, values={name: everything[name] for name in query.measures}))
    return rows


def _sort_key(keys: tuple[GroupKey, ...]) -> tuple[tuple[int, object], ...]:
    out: list[tuple[int, object]] = []
    for key in keys:
        if isinstance(key, tuple):
            out.append((0, -math.inf if key[0] is None else key[0]))
        elif isinstance(key, datetime):
            out.append((1, key.timestamp()))
        elif isinstance(key, int):
            out.append((2, key))
        else:
            out.append((3, key))
    return tuple(out)


def describe_key(group: GroupBy, key: GroupKey) -> str:
    """A key as an engineer reads it: ``[55, 60)``, ``< 55``, ``≥ 65``, a time or a name."""
    if isinstance(key, tuple):
        low, high = key
        if low is None:
            return f"< {high:g}"
        if high is None:
            return f"≥ {low:g}"
        return f"[{low:g}, {high:g})"
    if isinstance(key, datetime):
        return key.isoformat().replace("+00:00", "Z")
    return str(key)
