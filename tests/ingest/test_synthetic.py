"""Tests for the synthetic moulding line: determinism, ground truth, planted correlations, dataset."""

from __future__ import annotations

import csv
import dataclasses
import itertools
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import pytest

from services.ingest.synthetic import (
    DEFAULT_START,
    DEFECT_KINDS,
    PARAM_NAMES,
    ProcessSimulator,
    ProcessState,
    SyntheticLine,
    SyntheticPart,
    defect_probabilities,
    ng_probability,
    render_part,
    sample_defects,
    write_dataset,
)


def _abs_diff(a: npt.NDArray[np.uint8], b: npt.NDArray[np.uint8]) -> npt.NDArray[np.float64]:
    """Per-pixel mean absolute difference over the colour channels."""
    return np.asarray(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean(axis=2), dtype=np.float64)


def test_same_seed_gives_the_same_line_and_another_seed_a_different_one() -> None:
    first = list(SyntheticLine(seed=3, size=64).parts(25))
    again = list(SyntheticLine(seed=3, size=64).parts(25))
    other = list(SyntheticLine(seed=4, size=64).parts(25))
    for a, b in zip(first, again, strict=True):
        assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
        assert (a.defects, a.process, a.captured_at) == (b.defects, b.process, b.captured_at)
        assert a.part_id == b.part_id
    assert not any(np.array_equal(a.image, c.image) for a, c in zip(first, other, strict=True))
    goods = [SyntheticLine(seed=s, size=64).good_parts(2) for s in (3, 3, 4)]
    assert all(np.array_equal(a, b) for a, b in zip(goods[0], goods[1], strict=True))
    assert not np.array_equal(goods[0][0], goods[2][0])
    # training images and line parts come from separate streams: asking for one leaves the other alone
    line = SyntheticLine(seed=3, size=64)
    line.good_parts(5)
    assert all(np.array_equal(a.image, b.image) for a, b in zip(first[:5], line.parts(5), strict=True))


def test_process_values_do_not_depend_on_the_order_they_are_asked_for() -> None:
    forward = ProcessSimulator(7, DEFAULT_START).samples(5000)
    backward = ProcessSimulator(7, DEFAULT_START)
    assert backward.state_at(DEFAULT_START + timedelta(seconds=4999)) == forward[4999][1]
    # as-of: between two samples the earlier one is in force
    assert backward.state_at(DEFAULT_START + timedelta(seconds=10.9)) == forward[10][1]
    assert forward[10][0] == DEFAULT_START + timedelta(seconds=10)
    assert ProcessSimulator(8, DEFAULT_START).samples(20) != forward[:20]


def test_process_stays_near_the_set_points_with_excursions() -> None:
    states = [state for _, state in ProcessSimulator(2, DEFAULT_START).samples(3600)]
    for name in PARAM_NAMES:
        values = np.array([s.as_params()[name] for s in states])
        setpoint = ProcessState.SETPOINTS[name]
        assert abs(float(np.median(values)) - setpoint) < 0.03 * setpoint, name
        assert values.std() > 0, name
    temps = np.array([s.mould_temp_c for s in states])
    assert temps.min() < ProcessState.SETPOINTS["mould_temp_c"] - 5.0  # at least one chiller dip
    assert set(ProcessState.UNITS) == set(PARAM_NAMES) == set(states[0].as_params())


def test_defect_probabilities_at_set_points_and_in_excursions() -> None:
    nominal = ProcessState.nominal()
    base = defect_probabilities(nominal)
    assert set(base) == set(DEFECT_KINDS)
    assert 0.10 <= ng_probability(nominal) <= 0.25
    cold = defect_probabilities(dataclasses.replace(nominal, mould_temp_c=52.0))
    fast = defect_probabilities(dataclasses.replace(nominal, injection_speed_mm_s=100.0))
    pressed = defect_probabilities(dataclasses.replace(nominal, hold_pressure_bar=740.0))
    assert cold["sink_mark"] > 10 * base["sink_mark"]
    assert fast["flash"] > 10 * base["flash"]
    assert pressed["crack"] > 10 * base["crack"]
    for changed, kind in ((cold, "sink_mark"), (fast, "flash"), (pressed, "crack")):
        assert {k: v for k, v in changed.items() if k != kind} == {k: v for k, v in base.items() if k != kind}
    assert defect_probabilities(dataclasses.replace(nominal, cycle_time_s=40.0)) == base  # the decoy


def test_sink_mark_rate_rises_sharply_when_the_mould_is_cold() -> None:
    samples = ProcessSimulator(0, DEFAULT_START).samples(2000)
    rng = np.random.default_rng(0)
    setpoint = ProcessState.SETPOINTS["mould_temp_c"]
    cold, warm = [], []
    for _, state in samples:
        has_sink = "sink_mark" in sample_defects(rng, defect_probabilities(state))
        if state.mould_temp_c < setpoint - 5.0:
            cold.append(has_sink)
        elif state.mould_temp_c > setpoint:
            warm.append(has_sink)
    assert len(cold) >= 50 and len(warm) >= 200
    assert np.mean(cold) >= 3.0 * max(float(np.mean(warm)), 1e-3)


def test_at_most_two_defects_and_the_likeliest_kept() -> None:
    rng = np.random.default_rng(1)
    certain = dict.fromkeys(DEFECT_KINDS, 1.0) | {"scratch": 0.9999}
    for _ in range(50):
        kinds = sample_defects(rng, certain)
        assert len(kinds) == 2 and "scratch" not in kinds
    assert sample_defects(rng, dict.fromkeys(DEFECT_KINDS, 0.0)) == []


def test_masks_are_non_empty_exactly_for_defective_parts() -> None:
    line = SyntheticLine(seed=1, size=64, drift="mould_cooling", drift_duration_s=30.0, camera_ids=("a", "b"))
    parts = list(line.parts(120))
    defective = [p for p in parts if p.is_defective]
    assert 20 <= len(defective) < len(parts)
    for i, part in enumerate(parts):
        assert part.image.shape == (64, 64, 3) and part.image.dtype == np.uint8
        assert part.mask.shape == (64, 64) and part.mask.dtype == np.bool_
        assert part.mask.any() == part.is_defective
        assert len(part.defects) <= 2
        assert part.captured_at == DEFAULT_START + timedelta(seconds=0.5 * i)
        assert part.captured_at.utcoffset() == timedelta(0)
        assert part.camera_id == ("a", "b")[i % 2]
        assert part.process == line.process.state_at(part.captured_at)
        covered = np.zeros_like(part.mask)
        for defect in part.defects:
            x, y, w, h = defect.bbox
            assert x >= 0 and y >= 0 and w > 0 and h > 0 and x + w <= 64 and y + h <= 64
            assert 0 < defect.area <= w * h
            covered[y : y + h, x : x + w] = True
        assert not (part.mask & ~covered).any()


@pytest.mark.parametrize("kind", DEFECT_KINDS)
def test_each_defect_changes_exactly_the_pixels_of_its_mask(kind: str) -> None:
    good, good_mask, good_defects = render_part(np.random.default_rng(11), [], 128)
    bad, mask, planted = render_part(np.random.default_rng(11), [kind], 128)
    assert not good_mask.any() and good_defects == []
    assert [d.kind for d in planted] == [kind] and planted[0].area == mask.sum() > 0
    x, y, w, h = planted[0].bbox
    assert mask[y : y + h, x : x + w].sum() == mask.sum()
    assert mask[y, x : x + w].any() and mask[y + h - 1, x : x + w].any()  # the box is tight
    diff = _abs_diff(good, bad)
    assert not diff[~mask].any()
    assert (diff[mask] > 0).mean() >= 0.8  # and the mask holds little that did not change
    assert diff[mask].mean() >= 8.0


def test_good_parts_differ_yet_defects_stand_out() -> None:
    goods = SyntheticLine(seed=5, size=256).good_parts(6)
    centres = np.array([np.argwhere(g.mean(axis=2) > 100).mean(axis=0) for g in goods])  # the bright part
    assert centres.std(axis=0).max() > 0.5 and np.abs(centres - 128).max() < 8  # a few pixels of jitter
    first, second = goods[:2]
    between_good = _abs_diff(first, second)
    assert 1.0 < between_good.mean() < 20.0  # pose, lighting and belt jitter, but the same part
    typical = float(np.median(between_good))
    for seed in (0, 1, 2):
        good = render_part(np.random.default_rng(seed), [], 256)[0]
        for kind in DEFECT_KINDS:
            bad, mask, _ = render_part(np.random.default_rng(seed), [kind], 256)
            assert _abs_diff(good, bad)[mask].mean() >= 3.0 * typical, (seed, kind)


def test_mould_cooling_drift_raises_the_ng_rate_over_the_run() -> None:
    n = 450
    line = SyntheticLine(seed=2, size=64, drift="mould_cooling", drift_duration_s=n * 0.5)
    parts = list(line.parts(n))
    first, last = parts[: n // 3], parts[-(n // 3) :]

    def mean_temp(chunk: list[SyntheticPart]) -> float:
        return float(np.mean([p.process.mould_temp_c for p in chunk]))

    assert mean_temp(last) < mean_temp(first) - 5.0
    ng_first = np.mean([p.is_defective for p in first])
    ng_last = np.mean([p.is_defective for p in last])
    assert ng_last >= 2.0 * ng_first
    sink_first = sum("sink_mark" in p.defect_kinds for p in first)
    sink_last = sum("sink_mark" in p.defect_kinds for p in last)
    assert sink_last >= 3 * max(sink_first, 1)


def test_write_dataset_writes_the_mvtec_layout_and_logs(tmp_path: Path) -> None:
    base = write_dataset(tmp_path, n_train=3, n_test=40, seed=2, size=64)
    assert base == tmp_path / "synthetic"
    train = sorted((base / "train" / "good").glob("*.png"))
    assert len(train) == 3
    image = cv2.imread(str(train[0]), cv2.IMREAD_UNCHANGED)
    assert image is not None and image.shape == (64, 64, 3)

    with (base / "parts.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 40 == len(list((base / "test").glob("*/*.png")))
    assert list(rows[0]) == ["file", "part_id", "captured_at", "camera", "defects"]
    assert any(row["defects"] for row in rows) and any(not row["defects"] for row in rows)
    assert not (base / "ground_truth" / "good").exists()
    captured = []
    for row in rows:
        path = base / row["file"]
        folder = path.parent.name
        kinds = row["defects"].split(";") if row["defects"] else []
        assert path.is_file() and set(kinds) <= set(DEFECT_KINDS)
        assert folder == ("good" if not kinds else kinds[0] if len(kinds) == 1 else "combined")
        captured.append(datetime.fromisoformat(row["captured_at"]))
        assert captured[-1].utcoffset() == timedelta(0)
        if kinds:
            mask_path = base / "ground_truth" / folder / f"{path.stem}_mask.png"
            mask = cv2.imread(str(mask_path), cv2.IMREAD_UNCHANGED)
            assert mask is not None and mask.shape == (64, 64)
            assert set(np.unique(mask)) == {0, 255}

    with (base / "process.csv").open(newline="") as handle:
        process = list(csv.DictReader(handle))
    assert list(process[0]) == ["ts", "machine_id", *PARAM_NAMES]
    stamps = [datetime.fromisoformat(row["ts"]) for row in process]
    assert all(t.tzinfo is not None and t.utcoffset() == timedelta(0) for t in stamps)
    assert all(b - a == timedelta(seconds=1) for a, b in itertools.pairwise(stamps))
    assert stamps[0] <= min(captured) and max(captured) < stamps[-1] + timedelta(seconds=1)
    assert all(math.isfinite(float(row[name])) for row in process for name in PARAM_NAMES)
    assert {row["machine_id"] for row in process} == {"imm-1"}


def test_other_recipe_renders_with_defects() -> None:
    image, mask, planted = render_part(np.random.default_rng(0), ["crack", "flash"], 96, recipe="cap-B")
    assert image.shape == (96, 96, 3) and mask.any() and [d.kind for d in planted] == ["crack", "flash"]


def test_unknown_names_and_naive_times_are_rejected() -> None:
    with pytest.raises(ValueError, match="defect"):
        render_part(np.random.default_rng(0), ["dent"])
    with pytest.raises(ValueError, match="recipe"):
        SyntheticLine(recipe="housing-Z")
    with pytest.raises(ValueError, match="drift"):
        ProcessSimulator(0, DEFAULT_START, drift="heating")
    with pytest.raises(ValueError, match="timezone"):
        ProcessSimulator(0, datetime(2025, 1, 1))
    with pytest.raises(ValueError, match="before"):
        ProcessSimulator(0, DEFAULT_START).state_at(DEFAULT_START - timedelta(seconds=1))
    assert ProcessSimulator(0, datetime(2025, 1, 1, tzinfo=UTC)).start.tzinfo == UTC
