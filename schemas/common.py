"""Building blocks shared by every record: the base model, UTC timestamps, names, finite numbers."""

from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator, AllowInfNan, BaseModel, ConfigDict, StringConstraints


def ensure_utc(value: datetime) -> datetime:
    """Reject naive datetimes; convert aware ones to UTC."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(
            f"naive datetime {value.isoformat()} has no timezone; give an aware timestamp "
            "such as '2025-03-04T08:15:30Z' or '2025-03-04T09:15:30+01:00'"
        )
    return value.astimezone(UTC)


UtcDatetime = Annotated[datetime, AfterValidator(ensure_utc)]
"""A timezone-aware timestamp, stored and serialised in UTC."""

Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
"""A non-empty identifier such as a line, station, camera, machine or recipe name."""

FiniteFloat = Annotated[float, AllowInfNan(False)]
"""A float that is neither NaN nor infinite."""


class Record(BaseModel):
    """Base of every contract: unknown fields are an error and records are immutable values."""

    model_config = ConfigDict(extra="forbid", frozen=True)
