"""Dead letters: input that could not be decoded, joined or inspected, kept with the reason."""

from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import BeforeValidator, ConfigDict, Field
from pydantic.config import JsonDict

from schemas.common import Name, Record, UtcDatetime

MAX_REF_CHARS = 2000


def _truncate(value: object) -> object:
    if isinstance(value, str) and len(value) > MAX_REF_CHARS:
        return value[: MAX_REF_CHARS - 1] + "…"
    return value


DEAD_LETTER_EXAMPLE: JsonDict = {
    "schema_version": 1,
    "source": "decode",
    "reason": "PNG truncated: expected 1843721 bytes, got 65536",
    "original_ref": "file:///var/linewatch/blobs/9d/ff/"
    "9dff50df08c635815f4b19da10f756605a34a79a48d4ba48712782502975a70e.png",
    "frame_id": "01956039-694b-7c2e-9a41-5d3e2b7f8c10",
    "failed_at": "2025-03-04T08:15:30.140000Z",
}


class DeadLetter(Record):
    """A record that a step gave up on. Building one never fails on the bad input itself:
    ``frame_id`` is taken as given (it may be the malformed part) and ``original_ref`` is cut to
    ``MAX_REF_CHARS`` characters."""

    model_config = ConfigDict(json_schema_extra={"examples": [DEAD_LETTER_EXAMPLE]})

    schema_version: Literal[1] = 1
    source: Name = Field(description="The step that failed, e.g. decode, process, inspect")
    reason: str = Field(min_length=1)
    original_ref: Annotated[str, BeforeValidator(_truncate)] = Field(
        description="Blob URI, file path or an excerpt of the raw message"
    )
    frame_id: str | None = None
    failed_at: UtcDatetime


def reason_code(letter: DeadLetter) -> str:
    """The code a dead letter was rejected for (the text before the first colon of its reason)."""
    return letter.reason.partition(":")[0].strip() or "unknown"


def reject(step: str, code: str, detail: str, original_ref: str, frame_id: str | None = None) -> DeadLetter:
    """A dead letter from ``step`` (ingest, decode, process, inspect, store) for reason ``code``:
    its reason reads ``"<code>: <detail>"``."""
    return DeadLetter(
        source=step,
        reason=f"{code}: {detail}",
        original_ref=original_ref or "<none>",
        frame_id=frame_id,
        failed_at=datetime.now(UTC),
    )
