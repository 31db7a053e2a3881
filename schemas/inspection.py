"""The stored result of inspecting one frame: verdict, defects, heat map and process snapshot."""

from typing import Literal

from pydantic import ConfigDict, Field
from pydantic.config import JsonDict

from schemas.blob import FRAME_BLOB_EXAMPLE, HEATMAP_BLOB_EXAMPLE, BlobRef
from schemas.common import FiniteFloat, Name, Record, UtcDatetime
from schemas.defect import DEFECT_EXAMPLE, Defect
from schemas.ids import Uuid7Str
from schemas.process import PROCESS_SNAPSHOT_EXAMPLE, ProcessSnapshot

SCORE_THRESHOLD = 0.5
"""Normalised scores at or above this are anomalous: the detector's threshold maps to 0.5."""

Verdict = Literal["OK", "REVIEW", "NG"]  # REVIEW: the model is unsure, a person decides

INSPECTION_EXAMPLE: JsonDict = {
    "schema_version": 1,
    "frame_id": "01956039-694b-7c2e-9a41-5d3e2b7f8c10",
    "line_id": "press-line-2",
    "station_id": "st-040-weld",
    "camera_id": "cam-040-top",
    "part_id": "PN-88213-000457",
    "recipe": "bracket-a7",
    "captured_at": "2025-03-04T08:15:30.123000Z",
    "model_name": "patchcore-bracket-a7",
    "model_version": "2025.03.01-r2",
    "score_raw": 41.7,
    "score": 0.82,
    "verdict": "NG",
    "defects": [DEFECT_EXAMPLE],
    "image": FRAME_BLOB_EXAMPLE,
    "heatmap": HEATMAP_BLOB_EXAMPLE,
    "embedding": [0.12, -0.53, 0.08, 0.91],
    "process": PROCESS_SNAPSHOT_EXAMPLE,
    "timings_ms": {"decode": 6.1, "preprocess": 3.4, "infer": 18.9, "postprocess": 4.2},
    "inspected_at": "2025-03-04T08:15:30.171000Z",
}


class Inspection(Record):
    """One frame inspected once; stored idempotently keyed by ``frame_id``."""

    model_config = ConfigDict(json_schema_extra={"examples": [INSPECTION_EXAMPLE]})

    schema_version: Literal[1] = 1
    frame_id: Uuid7Str
    line_id: Name
    station_id: Name
    camera_id: Name
    part_id: Name | None = None
    recipe: Name
    captured_at: UtcDatetime
    model_name: Name
    model_version: Name
    score_raw: FiniteFloat = Field(description="The detector's own anomaly score, unnormalised")
    score: float = Field(ge=0, le=1, description=f"Normalised score; anomalous at >= {SCORE_THRESHOLD}")
    verdict: Verdict
    defects: list[Defect] = Field(default_factory=list)
    image: BlobRef | None = Field(
        default=None,
        description="The raw frame (claim check); gone from the blob store when frames are not kept",
    )
    heatmap: BlobRef | None = Field(
        default=None,
        description=(
            "The normalised anomaly map: an 8-bit grayscale PNG (0..255 for scores 0..1) aligned with "
            "the whole frame, at most 128 pixels on its longer side; holds none of the frame's pixels"
        ),
    )
    embedding: list[FiniteFloat] = Field(default_factory=list, description="Image-level feature vector")
    member_scores: dict[str, FiniteFloat] = Field(
        default_factory=dict,
        description="An ensemble's members' calibrated image scores (0 at each member's own threshold, "
        "above: anomalous to that member); empty for a single model or members the cascade did not run",
    )
    process: ProcessSnapshot
    timings_ms: dict[str, float] = Field(default_factory=dict, description="Step name → milliseconds")
    inspected_at: UtcDatetime
