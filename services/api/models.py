"""Response bodies of the API that are not stored records themselves."""

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from schemas.defect import BoundingBox, Defect, DefectLocation, DefectSeverity
from schemas.inspection import Inspection, Verdict


class InspectedDefect(BaseModel):
    type: str = Field(description="The defect class when known, else 'anomaly'")
    confidence: float = Field(description="Highest normalised anomaly score in the region (0.5 = threshold)")
    bbox: BoundingBox
    severity: DefectSeverity
    location: DefectLocation
    area_px: int

    @classmethod
    def from_defect(cls, defect: Defect) -> "InspectedDefect":
        return cls(
            type=defect.defect_class or "anomaly",
            confidence=defect.max_score,
            bbox=defect.bbox,
            severity=defect.severity,
            location=defect.location,
            area_px=defect.area_px,
        )


class InspectResult(BaseModel):
    """The answer to an AOI machine that posted a frame."""

    frame_id: str
    timestamp: datetime = Field(description="When the frame was captured (UTC)")
    part_id: str | None
    overall_grade: Verdict
    score: float = Field(description="Normalised anomaly score; NG at 0.5 and above")
    defects: list[InspectedDefect]
    heatmap_url: str | None = Field(description="The heat map over the frame (PNG, needs the API key)")


class InspectionPage(BaseModel):
    total: int = Field(description="Inspections matching the filters, over all pages")
    limit: int
    offset: int
    items: list[Inspection] = Field(description="Newest first; embeddings left out unless asked for")


class NgRatePoint(BaseModel):
    bucket_start: datetime
    line_id: str
    camera_id: str
    total: int
    ng: int
    ng_rate: float


class NgRateSeries(BaseModel):
    bucket_s: int
    points: list[NgRatePoint] = Field(description="Oldest bucket first, one point per line and camera")


class CameraStatus(BaseModel):
    line_id: str
    camera_id: str
    last_frame_at: datetime | None
    last_verdict: Verdict | None
    frames: int = Field(description="Frames captured in the window")
    ng: int = Field(description="NG verdicts in the window")
    ng_rate: float | None = Field(description="ng / frames in the window; null without frames")


class LineStatus(BaseModel):
    generated_at: datetime
    window_min: int
    cameras: list[CameraStatus] = Field(description="Every camera that sent a frame in the look-back period")
    line: dict[str, Any] | None = Field(description="The running line's own status, when the API runs in it")


class ReadyReport(BaseModel):
    ready: bool
    records: str
    model: str
