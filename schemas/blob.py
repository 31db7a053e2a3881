"""Claim-check references: image bytes live in a blob store, messages carry this reference."""

from typing import Literal

from pydantic import ConfigDict, Field
from pydantic.config import JsonDict

from schemas.common import Record

BlobEncoding = Literal["png", "jpeg", "bmp", "tiff", "webp", "npy"]
"""How the bytes are encoded; ``npy`` is a raw numpy array (e.g. a float heat map)."""

FRAME_BLOB_EXAMPLE: JsonDict = {
    "schema_version": 1,
    "uri": "file:///var/linewatch/blobs/9d/ff/9dff50df08c635815f4b19da10f756605a34a79a48d4ba48712782502975a70e.png",
    "sha256": "9dff50df08c635815f4b19da10f756605a34a79a48d4ba48712782502975a70e",
    "size_bytes": 1843721,
    "width": 2448,
    "height": 2048,
    "encoding": "png",
}

HEATMAP_BLOB_EXAMPLE: JsonDict = {
    "schema_version": 1,
    "uri": "file:///var/linewatch/blobs/1d/70/1d7035dd7fd6a3aa413e06858073febd62ab28b22652dce388ebfbf398797631.png",
    "sha256": "1d7035dd7fd6a3aa413e06858073febd62ab28b22652dce388ebfbf398797631",
    "size_bytes": 3912,
    "width": 128,
    "height": 107,
    "encoding": "png",
}


class BlobRef(Record):
    """Where a blob lives and what it is: enough to fetch it and to check that it is intact."""

    model_config = ConfigDict(json_schema_extra={"examples": [FRAME_BLOB_EXAMPLE, HEATMAP_BLOB_EXAMPLE]})

    schema_version: Literal[1] = 1
    uri: str = Field(min_length=1, description="Blob URI, e.g. file:///var/linewatch/blobs/ab/cd/<sha>.png")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="SHA-256 of the bytes, 64 lower-case hex")
    size_bytes: int = Field(ge=0)
    width: int = Field(gt=0, description="Image width in pixels")
    height: int = Field(gt=0, description="Image height in pixels")
    encoding: BlobEncoding
