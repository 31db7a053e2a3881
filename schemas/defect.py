"""A defect: one connected region of an anomaly map, measured in pixels of the original frame."""

from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.config import JsonDict

from schemas.common import FiniteFloat, Name, Record

DefectLocation = Literal[
    "top_left",
    "top_center",
    "top_right",
    "middle_left",
    "center",
    "middle_right",
    "bottom_left",
    "bottom_center",
    "bottom_right",
]
"""Which cell of a 3×3 grid over the part/frame holds the defect's centroid."""

DefectSeverity = Literal["minor", "major", "critical"]

DEFECT_EXAMPLE: JsonDict = {
    "schema_version": 1,
    "bbox": {"x": 1630, "y": 212, "width": 184, "height": 96},
    "area_px": 11240,
    "area_share": 0.0022,
    "max_score": 0.93,
    "mean_score": 0.71,
    "centroid": {"x": 1719.4, "y": 258.8},
    "location": "top_right",
    "severity": "major",
    "defect_class": "weld_spatter",
    "cluster_id": 3,
}


class BoundingBox(BaseModel):
    """An axis-aligned box in pixels of the original frame; (x, y) is the top-left corner."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    x: int = Field(ge=0)
    y: int = Field(ge=0)
    width: int = Field(gt=0)
    height: int = Field(gt=0)


class Point(BaseModel):
    """A point in pixels of the original frame."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    x: FiniteFloat
    y: FiniteFloat


class Defect(Record):
    """One defect found on a frame."""

    model_config = ConfigDict(json_schema_extra={"examples": [DEFECT_EXAMPLE]})

    schema_version: Literal[1] = 1
    bbox: BoundingBox
    area_px: int = Field(ge=0, description="Pixels above threshold inside the region")
    area_share: float = Field(ge=0, le=1, description="area_px as a share of the part (or frame) area")
    max_score: FiniteFloat
    mean_score: FiniteFloat
    centroid: Point
    location: DefectLocation
    severity: DefectSeverity
    defect_class: Name | None = Field(default=None, description="e.g. scratch, dent, weld_spatter")
    cluster_id: int | None = Field(default=None, description="Set by clustering of defect embeddings")
    embedding: list[FiniteFloat] = Field(
        default_factory=list,
        description=(
            "Unit-length feature of the defect's region (what it adds to a good part), for clustering;"
            " empty when the detector gives none"
        ),
    )

    @model_validator(mode="after")
    def _mean_not_above_max(self) -> Self:
        if self.mean_score > self.max_score:
            raise ValueError(f"mean_score {self.mean_score} is above max_score {self.max_score}")
        return self
