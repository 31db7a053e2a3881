"""Defects from synthetic anomaly maps: components, measurements, locations, severity."""

from __future__ import annotations

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
