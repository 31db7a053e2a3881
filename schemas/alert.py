"""Alerts raised by the line's monitors (NG rate, drift, stale process data, ...)."""

from typing import Literal

from pydantic import ConfigDict, Field, JsonValue
from pydantic.config import JsonDict

from schemas.common import Name, Record, UtcDatetime
from schemas.ids import Uuid7Str

AlertSeverity = Literal["info", "warning", "critical"]

ALERT_EXAMPLE: JsonDict = {
    "schema_version": 1,
    "alert_id": "01956039-de00-7d41-b2c7-0e6f4a93d215",
    "line_id": "press-line-2",
    "camera_id": "cam-040-top",
    "kind": "ng_rate",
    "severity": "warning",
    "message": "NG rate 7.5% over the last 10 min on cam-040-top (limit 3%)",
    "raised_at": "2025-03-04T08:16:00Z",
    "details": {"window_s": 600, "total": 240, "ng": 18, "limit": 0.03},
}


class Alert(Record):
    """Something on the line needs a person's attention."""

    model_config = ConfigDict(json_schema_extra={"examples": [ALERT_EXAMPLE]})

    schema_version: Literal[1] = 1
    alert_id: Uuid7Str
    line_id: Name
    camera_id: Name | None = None
    kind: Name = Field(description="e.g. ng_rate, drift, stale_process")
    severity: AlertSeverity
    message: str = Field(min_length=1)
    raised_at: UtcDatetime
    details: dict[str, JsonValue] = Field(default_factory=dict)
