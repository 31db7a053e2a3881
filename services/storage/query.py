"""Filters for reading inspections back, and the rows of the NG-rate time series."""

from datetime import datetime
from typing import NamedTuple, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from schemas.common import FiniteFloat, UtcDatetime
from schemas.defect import DefectLocation, DefectSeverity
from schemas.inspection import Verdict


class InspectionQuery(BaseModel):
    """Which inspections to read. Every filter left as None matches everything.

    The time range is on ``captured_at``: ``captured_from`` inclusive, ``captured_to`` exclusive.
    ``params`` maps a process parameter to an inclusive ``(min, max)`` range; either end may be
    None for an open range. The defect filters (location, severity, cluster) each ask for a frame
    with at least one such defect, not necessarily the same one. ``limit``/``offset`` page through
    the results, newest first, and are ignored by counts and NG rates.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    captured_from: UtcDatetime | None = None
    captured_to: UtcDatetime | None = None
    line_id: str | None = None
    camera_id: str | None = None
    recipe: str | None = None
    verdict: Verdict | None = None
    defect_location: DefectLocation | None = Field(default=None, description="Has a defect here")
    severity: DefectSeverity | None = Field(default=None, description="Has a defect of this severity")
    cluster_id: int | None = Field(default=None, description="Has a defect in this defect cluster")
    params: dict[str, tuple[FiniteFloat | None, FiniteFloat | None]] = Field(default_factory=dict)
    limit: int = Field(default=100, ge=1, le=10_000)
    offset: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _ranges_not_empty(self) -> Self:
        if self.captured_from and self.captured_to and self.captured_from >= self.captured_to:
            raise ValueError("captured_from must be before captured_to")
        for name, (low, high) in self.params.items():
            if low is not None and high is not None and low > high:
                raise ValueError(f"process parameter {name!r}: min {low} is above max {high}")
        return self


class NgRateBucket(NamedTuple):
    """Inspections and NG verdicts of one camera on one line in one time bucket."""

    bucket_start: datetime
    line_id: str
    camera_id: str
    total: int
    ng: int
