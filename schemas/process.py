"""Process data from the machines (SCADA): raw samples, and the snapshot joined to an inspection."""

from typing import Literal, Self

from pydantic import ConfigDict, Field, field_validator, model_validator
from pydantic.config import JsonDict

from schemas.common import FiniteFloat, Name, Record, UtcDatetime

ProcessStatus = Literal["ok", "stale", "missing"]

PROCESS_SAMPLE_EXAMPLE: JsonDict = {
    "schema_version": 1,
    "line_id": "press-line-2",
    "machine_id": "welder-040",
    "ts": "2025-03-04T08:15:29.900000Z",
    "params": {"weld_current_a": 212.5, "weld_time_ms": 38.0, "electrode_force_kn": 3.1},
    "units": {"weld_current_a": "A", "weld_time_ms": "ms", "electrode_force_kn": "kN"},
}

PROCESS_SNAPSHOT_EXAMPLE: JsonDict = {
    "schema_version": 1,
    "status": "ok",
    "params": {"weld_current_a": 212.5, "weld_time_ms": 38.0, "electrode_force_kn": 3.1},
    "sample_ts": "2025-03-04T08:15:29.900000Z",
    "age_s": 0.223,
    "machine_id": "welder-040",
}

PROCESS_SNAPSHOT_MISSING_EXAMPLE: JsonDict = {"schema_version": 1, "status": "missing", "params": {}}


def _check_param_names(params: dict[str, float]) -> dict[str, float]:
    for name in params:
        if not name.strip():
            raise ValueError(f"process parameter names must be non-empty, got {name!r}")
    return params


class ProcessSample(Record):
    """One reading of a machine's process parameters (a SCADA/PLC sample)."""

    model_config = ConfigDict(json_schema_extra={"examples": [PROCESS_SAMPLE_EXAMPLE]})

    schema_version: Literal[1] = 1
    line_id: Name
    machine_id: Name
    ts: UtcDatetime
    params: dict[str, FiniteFloat] = Field(description="Parameter name → finite value")
    units: dict[str, str] = Field(default_factory=dict, description="Parameter name → unit, optional")

    @field_validator("params")
    @classmethod
    def _names_not_empty(cls, params: dict[str, float]) -> dict[str, float]:
        return _check_param_names(params)


class ProcessSnapshot(Record):
    """The process parameters in force when a frame was taken (an as-of join of samples to frames).

    ``ok``: a recent sample was found; ``stale``: the latest sample is older than allowed;
    ``missing``: no sample at all, and then ``params`` is empty.
    """

    model_config = ConfigDict(
        json_schema_extra={"examples": [PROCESS_SNAPSHOT_EXAMPLE, PROCESS_SNAPSHOT_MISSING_EXAMPLE]}
    )

    schema_version: Literal[1] = 1
    status: ProcessStatus
    params: dict[str, FiniteFloat] = Field(default_factory=dict)
    sample_ts: UtcDatetime | None = None
    age_s: float | None = Field(default=None, ge=0, description="Age of the sample at capture time")
    machine_id: Name | None = None

    @field_validator("params")
    @classmethod
    def _names_not_empty(cls, params: dict[str, float]) -> dict[str, float]:
        return _check_param_names(params)

    @model_validator(mode="after")
    def _consistent_with_status(self) -> Self:
        if self.status == "missing" and self.params:
            raise ValueError("a 'missing' process snapshot must have empty params")
        if self.status != "missing" and self.sample_ts is None:
            raise ValueError(f"a '{self.status}' process snapshot needs the sample_ts it was taken from")
        return self
