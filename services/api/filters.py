"""Query parameters into an :class:`InspectionQuery`, with 422 and a clear reason when they do not fit."""

from datetime import datetime
from typing import Annotated, Any

from fastapi import HTTPException, Query, status
from pydantic import ValidationError

from schemas.defect import DefectLocation
from schemas.inspection import Verdict
from services.storage.query import InspectionQuery

PARAM_HELP = (
    "Process parameter range as name:min:max, inclusive; leave an end empty for an open range "
    "(mould_temp_c:55:65, hold_pressure_bar::600). Repeat for several parameters."
)

FromParam = Annotated[
    datetime | None,
    Query(alias="from", description="Captured at or after (ISO 8601 with timezone, e.g. 2025-03-04T08:00Z)"),
]
ToParam = Annotated[datetime | None, Query(description="Captured before (ISO 8601 with timezone)")]


def parse_param_range(text: str) -> tuple[str, tuple[float | None, float | None]]:
    """``"mould_temp_c:55:65"`` → ``("mould_temp_c", (55.0, 65.0))``; an empty end is open (None)."""
    parts = text.rsplit(":", 2)
    if len(parts) != 3 or not parts[0].strip():
        raise ValueError(f"param={text!r}: expected name:min:max, e.g. mould_temp_c:55:65")
    name, low, high = parts
    return name.strip(), (_number(low, text), _number(high, text))


def _number(value: str, text: str) -> float | None:
    if not value.strip():
        return None
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"param={text!r}: {value!r} is not a number") from None


def build_query(**fields: Any) -> InspectionQuery:
    """An InspectionQuery, or HTTP 422 naming each field that is wrong."""
    try:
        return InspectionQuery(**fields)
    except ValidationError as err:
        reasons = [
            f"{'.'.join(str(p) for p in e['loc']) or 'query'}: {e['msg']}"
            for e in err.errors(include_url=False)
        ]
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, reasons) from None


def inspection_filters(
    captured_from: FromParam = None,
    to: ToParam = None,
    line_id: str | None = None,
    camera_id: str | None = None,
    recipe: str | None = None,
    verdict: Verdict | None = None,
    defect_location: Annotated[DefectLocation | None, Query(description="Has a defect in this cell")] = None,
    param: Annotated[list[str] | None, Query(description=PARAM_HELP)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> InspectionQuery:
    """Every filter of InspectionQuery as a query parameter (newest first, paged by limit/offset)."""
    try:
        params = dict(parse_param_range(text) for text in param or [])
    except ValueError as err:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(err)) from None
    return build_query(
        captured_from=captured_from,
        captured_to=to,
        line_id=line_id,
        camera_id=camera_id,
        recipe=recipe,
        verdict=verdict,
        defect_location=defect_location,
        params=params,
        limit=limit,
        offset=offset,
    )
