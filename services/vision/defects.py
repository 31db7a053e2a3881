"""From an anomaly map to outlined defects: threshold, close, connected components, measure, grade."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

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
    # A defect is found where the map crosses the threshold, but the map is patch-level and smoothed,
    # so that region is larger than the defect. Its box, area and centroid are measured on its core:
    # the pixels at least this fraction of the way (in log score) from the threshold to its peak.
    # 0 measures the whole region.
    core_fraction: float = Field(default=0.5, ge=0.0, lt=1.0)
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
    embedding: tuple[float, ...] = ()  # unit-length defect embedding for clustering; () without one


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


def logit(p: np.ndarray) -> np.ndarray:
    """The log-odds of normalised scores: linear in the log raw score (see calibration.normalise)."""
    q = np.clip(p.astype(np.float64), 1e-12, 1 - 1e-12)
    return np.asarray(np.log(q / (1 - q)))


def find_defects(
    score_map: np.ndarray,
    rules: DefectRules,
    frame_hw: tuple[int, int] | None = None,
    offset_xy: tuple[int, int] = (0, 0),
    threshold: float = 0.5,
    features: np.ndarray | None = None,
) -> list[DefectRegion]:
    """Defects in a normalised (H, W) map, measured in the frame's pixels, most severe first.

    ``frame_hw`` is the size of the inspected area in the original frame (the ROI, or the whole
    frame) and ``offset_xy`` the ROI's origin; by default the map's own pixels are used. Each region
    above ``threshold`` is one defect, measured on its core (``rules.core_fraction``).

    ``features`` (D, h, w), a feature grid over the same area, gives each defect an embedding: the
    features averaged over the grid cells its whole region covers (:func:`region_embedding`).
    """
    map_h, map_w = score_map.shape
    frame_h, frame_w = frame_hw or (map_h, map_w)
    sx, sy = frame_w / map_w, frame_h / map_h
    binary: np.ndarray = (score_map >= threshold).astype(np.uint8)
    if rules.close_px > 1:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (rules.close_px, rules.close_px))
        binary = cv2.morphologyEx(binary, cv2.MORPH_CLOSE, kernel)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    z_threshold = float(logit(np.array(threshold)))
    defects = []
    for label in range(1, count):
        x, y, w, h, area = (int(v) for v in stats[label])
        if area < rules.min_area_px:
            continue
        window = score_map[y : y + h, x : x + w]
        inside = labels[y : y + h, x : x + w] == label
        max_score = float(window[inside].max())
        core = inside
        if rules.core_fraction > 0:
            z = logit(window)
            z_peak = float(z[inside].max())
            core = inside & (z >= z_threshold + rules.core_fraction * (z_peak - z_threshold))
        rows, cols = np.nonzero(core)
        top, left = int(rows.min()), int(cols.min())
        core_h, core_w = int(rows.max()) - top + 1, int(cols.max()) - left + 1
        core_area = int(core.sum())
        share = core_area / float(map_h * map_w)
        cx, cy = x + float(cols.mean()), y + float(rows.mean())
        defects.append(
            DefectRegion(
                bbox=(
                    round((x + left) * sx) + offset_xy[0],
                    round((y + top) * sy) + offset_xy[1],
                    max(1, round(core_w * sx)),
                    max(1, round(core_h * sy)),
                ),
                area_px=max(1, round(core_area * sx * sy)),
                area_share=share,
                max_score=max_score,
                mean_score=float(window[core].mean()),
                centroid=((cx + 0.5) * sx + offset_xy[0], (cy + 0.5) * sy + offset_xy[1]),
                location=location_name(cx + 0.5, cy + 0.5, map_w, map_h),
                severity=grade(max_score, share, rules),
                embedding=region_embedding(features, labels == label) if features is not None else (),
            )
        )
    defects.sort(key=lambda d: (d.max_score, d.area_px), reverse=True)
    return defects


EMBEDDING_DECIMALS = 4
"""Defect embeddings are unit vectors rounded to this many decimals: about 1 KB a defect in JSON."""


def region_embedding(features: np.ndarray, region: np.ndarray) -> tuple[float, ...]:
    """The (D, h, w) ``features`` averaged over the cells of the grid that the boolean ``region`` (a
    mask over the whole map, any size) covers, each cell weighted by the share of it covered; scaled
    to unit length (clustering compares directions) and rounded. () when the region is empty."""
    _, grid_h, grid_w = features.shape
    cover = cv2.resize(region.astype(np.float32), (grid_w, grid_h), interpolation=cv2.INTER_AREA)
    total = float(cover.sum())
    if total <= 0:
        return ()
    pooled = np.tensordot(features.astype(np.float32), cover / total, axes=([1, 2], [0, 1]))
    norm = float(np.linalg.norm(pooled))
    if not np.isfinite(norm) or norm == 0:
        return ()
    return tuple(round(float(v), EMBEDDING_DECIMALS) for v in pooled / norm)
