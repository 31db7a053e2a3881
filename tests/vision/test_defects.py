"""Defects from synthetic anomaly maps: components, measurements, locations, severity."""

from __future__ import annotations

import cv2
import numpy as np

from services.vision.defects import DefectRules, find_defects, grade, location_name


def synthetic_map() -> np.ndarray:
    score_map = np.full((256, 256), 0.1, dtype=np.float32)
    score_map[20:40, 200:240] = 0.95  # 20x40 block, top right
    score_map[180:190, 30:40] = 0.6  # 10x10 block, bottom left third
    score_map[128, 128] = 0.99  # a one-pixel speck
    return score_map


def test_components_are_found_measured_and_specks_dropped() -> None:
    defects = find_defects(synthetic_map(), DefectRules(close_px=1))
    assert len(defects) == 2
    big, small = defects
    assert big.bbox == (200, 20, 40, 20)
    assert big.area_px == 800
    assert big.location == "top_right"
    assert big.severity == "critical"
    assert big.max_score == np.float32(0.95)
    assert small.bbox == (30, 180, 10, 10)
    assert small.location == "bottom_left"
    assert small.severity == "minor"
    assert abs(small.area_share - 100 / 65536) < 1e-9
    assert abs(small.centroid[0] - 35.0) < 1e-6 and abs(small.centroid[1] - 185.0) < 1e-6


def test_measurements_scale_to_the_original_frame_and_roi_offset() -> None:
    defects = find_defects(
        synthetic_map(), DefectRules(close_px=1), frame_hw=(512, 1024), offset_xy=(100, 50)
    )
    big = defects[0]
    assert big.bbox == (200 * 4 + 100, 20 * 2 + 50, 160, 40)
    assert big.area_px == 800 * 8
    assert big.location == "top_right"  # location is relative to the inspected area


def test_closing_joins_fragments_of_one_scratch() -> None:
    score_map = np.zeros((64, 64), dtype=np.float32)
    for x in range(5, 60, 6):  # a dashed scratch 6 px wide with gaps of 2 px
        score_map[28:34, x : x + 4] = 0.8
    assert len(find_defects(score_map, DefectRules(close_px=1, min_area_px=1))) > 5
    assert len(find_defects(score_map, DefectRules(close_px=5, min_area_px=1))) == 1


def test_nothing_above_threshold_gives_no_defects() -> None:
    assert find_defects(np.full((32, 32), 0.49, dtype=np.float32), DefectRules()) == []


def test_grid_locations_and_severity_rules() -> None:
    assert location_name(1, 1, 90, 90) == "top_left"
    assert location_name(45, 45, 90, 90) == "center"
    assert location_name(89, 60, 90, 90) == "bottom_right"
    assert location_name(30, 29.9, 90, 90) == "top_center"
    rules = DefectRules()
    assert grade(0.6, 0.001, rules) == "minor"
    assert grade(0.8, 0.001, rules) == "major"
    assert grade(0.6, 0.02, rules) == "major"
    assert grade(0.6, 0.06, rules) == "critical"


def blurred_blob(height: int = 128, width: int = 128) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """A normalised map the way a detector draws a 12x8 defect: patch-level, smoothed, wider than it."""
    z = np.full((height, width), -3.0)  # log-odds: good surface well under the threshold
    z[60:68, 40:52] = 20.0  # the defect, 12 wide and 8 high, at (40, 60), far over it
    z = cv2.GaussianBlur(z, (0, 0), 4)
    return (1 / (1 + np.exp(-z))).astype(np.float32), (40, 60, 12, 8)


def box_iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    ix = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    return ix * iy / (a[2] * a[3] + b[2] * b[3] - ix * iy)


def test_a_smoothed_defect_is_measured_on_its_core_not_on_its_blur() -> None:
    score_map, planted = blurred_blob()
    (whole,) = find_defects(score_map, DefectRules(core_fraction=0.0))
    (core,) = find_defects(score_map, DefectRules())
    assert whole.bbox[2] >= 1.5 * planted[2]  # the region at the threshold: the blur's extent
    assert box_iou(core.bbox, planted) > 0.7 and box_iou(whole.bbox, planted) < 0.4
    assert core.area_px < whole.area_px and core.max_score == whole.max_score
    assert abs(core.centroid[0] - 46) < 1 and abs(core.centroid[1] - 64) < 1
    assert core.mean_score > whole.mean_score


def test_a_flat_topped_region_is_its_own_core() -> None:
    (defect,) = find_defects(synthetic_map()[:128, 128:], DefectRules(close_px=1))
    assert defect.bbox == (72, 20, 40, 20) and defect.area_px == 800
