"""A frame: one image taken by one camera at one station, travelling as a blob reference."""

from typing import Literal

from pydantic import ConfigDict, Field
from pydantic.config import JsonDict

from schemas.blob import FRAME_BLOB_EXAMPLE, BlobRef
from schemas.common import Name, Record, UtcDatetime
from schemas.ids import Uuid7Str

FRAME_EXAMPLE: JsonDict = {
    "schema_version": 1,
    "frame_id": "01956039-694b-7c2e-9a41-5d3e2b7f8c10",
    "line_id": "press-line-2",
    "station_id": "st-040-weld",
    "camera_id": "cam-040-top",
    "part_id": "PN-88213-000457",
    "recipe": "bracket-a7",
    "captured_at": "2025-03-04T08:15:30.123000Z",
    "image": FRAME_BLOB_EXAMPLE,
}


class Frame(Record):
    """A captured frame. ``frame_id`` is minted once, at capture, and keys every later record."""

    model_config = ConfigDict(json_schema_extra={"examples": [FRAME_EXAMPLE]})

    schema_version: Literal[1] = 1
    frame_id: Uuid7Str
    line_id: Name
    station_id: Name
    camera_id: Name
    part_id: Name | None = Field(default=None, description="Serial of the part in view, when known")
    recipe: Name = Field(description="Product/recipe the line is running")
    captured_at: UtcDatetime
    image: BlobRef
