"""From an anomaly map to outlined defects: threshold, close, connected components, measure, grade."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict

LOCATIONS = (
    ("top_left", "top_center", "top_right"),
    ("middle_left", "center", "middle_right"),
    ("bottom_left", "bottom_center", "bottom_right"),
)


class DefectRules(BaseModel):
    """How a normalised anomaly map becomes defects; stored in the model card, tunable per line."""

    model_config = ConfigDict(extra="forbid")

    min_area_px: int = 16  # specks smaller than this (at the model's input size) are dropped
    close_px: int = 5  # morphological closing kernel, joins fragments of one defect
    major_score: float = 0.75
    major_area_share: float = 0.01
    critical_score: float = 0.9
    critical_area_share: float = 0.05


@dataclass(frozen=True)
class DefectRegion:
    bbox: tuple[int, int, int, int]  # x, y, width, height in original frame pixels
    area_px: int  # in original frame pixels
    area_share: float  # share of the inspected area (the ROI, or the whole frame)
    max_score: float  # normalised, threshold at 0.5
    mean_score: float
    centroid: tuple[float, float]  # x, y in original frame pixels
    location: str  # coarse 3x3 grid name
    severity: str  # minor / major / critical


def location_name(cx: float, cy: float, width: float, height: float) -> str:
    col = min(2, max(0, int(3 * cx / width)))
    row = min(2, max(0, int(3 * cy / height)))
    return LOCATIONS[row][col]


def grade(max_score: float, area_share: float, rules: DefectRules) -> str:
    if max_score >= rules.critical_score or area_share >= rules.critical_area_share:
        return "critical"
    if max_score >= rules.major_score or area_share >= rules.major_area_share:
        return "major"
    return "minor"


def find_defects(
    score_map: np.ndarray,
    rules: DefectRules,
    frame_hw: tuple[int, int] | None = None,
    offset_xy: tuple[int, int] = (0, 0),
    threshold: float = 0.5,
) -> list[DefectRegion]:
    """Defects in a normalised (H, W) map, measured in the frame's pixels, most severe first.

    ``frame_hw`` is the size of the inspected area in the original frame (the ROI, or the whole
    frame) and ``offset_xy`` the ROI's origin; by default the map's own pixels are used.
    """
    map_h, map_w = score_map.shape
    frame_h, frame_w = frame_hw or (map_h, map_w)
    sx, sy = frame_w / map_w, frame_h / map_h
    binary: np.ndarray = (score_map >= threshold).astype(np.uint8)
    if rules.close_px > 1:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (rules.close_px, rules.close_px))
        binary = cv2.morphologyEx(binary, cv2.MORPH_CLOSE, kernel)
    count, labels, stats, centroids = cv2.connectedComponentsWithStats(binary, connectivity=8)
    defects = []
    for label in range(1, count):
        x, y, w, h, area = (int(v) for v in stats[label])
        if area < rules.min_area_px:
            continue
        values = score_map[labels == label]
        share = area / float(map_h * map_w)
        cx, cy = float(centroids[label][0]), float(centroids[label][1])
        max_score = float(values.max())
        defects.append(
            DefectRegion(
                bbox=(
                    round(x * sx) + offset_xy[0],
                    round(y * sy) + offset_xy[1],
                    max(1, round(w * sx)),
                    max(1, round(h * sy)),
                ),
                area_px=max(1, round(area * sx * sy)),
                area_share=share,
                max_score=max_score,
                mean_score=float(values.mean()),
                centroid=((cx + 0.5) * sx + offset_xy[0], (cy + 0.5) * sy + offset_xy[1]),
                location=location_name(cx + 0.5, cy + 0.5, map_w, map_h),
                severity=grade(max_score, share, rules),
            )
        )
    defects.sort(key=lambda d: (d.max_score, d.area_px), reverse=True)
    return defects
