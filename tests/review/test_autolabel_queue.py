"""Auto-labels from known heat maps, the review queue's choices, and the labelling step on real
stores (SQLite labels, the file blob store)."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest

from schemas.inspection import Inspection
from services.review.autolabel import MASK_LEVEL, auto_mask, decode_png, mask_of_heatmap
from services.review.labeller import label_inspections
from services.review.queue import ReviewPolicy, ReviewSelector, within_budget
from services.steps.finish import store_heatmap
from services.storage.label_query import LabelQuery
from services.storage.stores import open_blob_store, open_label_store
from tests.storage.factories import T0, make_defect, make_inspection

NOW = T0 + timedelta(hours=1)


def test_the_mask_is_the_heat_map_above_the_ng_level_without_specks_or_holes() -> None:
    levels = np.zeros((40, 60), np.uint8)
    levels[10:20, 10:25] = 200  # a defect region ...
    levels[14, 16] = 40  # ... with a pin hole
    levels[30, 50] = 255  # a one-pixel speck
    levels[2:6, 40:44] = MASK_LEVEL - 1  # warm, but below the NG level
    mask = mask_of_heatmap(levels)
    expected = np.zeros_like(mask)
    expected[10:20, 10:25] = True
    assert (mask == expected).all()
    raw = mask_of_heatmap(levels, open_px=0, close_px=0)
    assert raw[30, 50] and not raw[14, 16] and raw.sum() == 10 * 15 - 1 + 1
    with pytest.raises(ValueError, match="8-bit grayscale"):
        mask_of_heatmap(levels.astype(np.float32))


def test_an_inspection_s_mask_is_stored_from_its_heat_map(tmp_path: Path) -> None:
    blobs = open_blob_store((tmp_path / "blobs").as_uri())
    levels = np.zeros((48, 64), np.uint8)
    levels[5:15, 30:50] = 230
    with_map = make_inspection(verdict="NG").model_copy(update={"heatmap": store_heatmap(blobs, levels)})
    ref = auto_mask(with_map, blobs)
    assert ref is not None and (ref.width, ref.height) == (64, 48)
    stored = decode_png(blobs.get(ref.uri))
    assert set(np.unique(stored)) == {0, 255} and (stored == 255).sum() == 10 * 20
    cold = make_inspection(verdict="NG").model_copy(
        update={"heatmap": store_heatmap(blobs, np.full((48, 64), 90, np.uint8))}
    )
    assert auto_mask(cold, blobs) is None  # nothing reaches the NG level
    assert auto_mask(make_inspection(verdict="NG"), blobs) is None  # no heat map
    blobs.close()


def scored(score: float, at_s: float = 0, verdict: str | None = None, **update: object) -> Inspection:
    verdict = verdict or ("NG" if score >= 0.5 else "OK")
    base = make_inspection(at_s=at_s, verdict=verdict)  # type: ignore[arg-type]
    return base.model_copy(update={"score": score, **update})


def test_the_queue_picks_the_uncertain_frames() -> None:
    selector = ReviewSelector(ReviewPolicy(min_history=5, window=50))
    for i in range(10):  # an ordinary history: 10 ms frames, scratches
        routine = scored(0.9, at_s=i, timings_ms={"infer": 10.0}, defects=[make_defect("center")])
        routine = routine.model_copy(
            update={"defects": [d.model_copy(update={"defect_class": "scratch"}) for d in routine.defects]}
        )
        selector.consider(routine)
    confident_ok, confident_ng = scored(0.05), scored(0.97)
    review_band = scored(0.42, verdict="REVIEW")
    just_ok, just_ng = scored(0.47), scored(0.55)
    slow = scored(0.1, timings_ms={"infer": 45.0})
    rare = scored(0.9, defects=[make_defect("center").model_copy(update={"defect_class": "crack"})])
    results = {
        name: selector.consider(inspection)
        for name, inspection in {
            "confident_ok": confident_ok,
            "confident_ng": confident_ng,
            "review_band": review_band,
            "just_ok": just_ok,
            "just_ng": just_ng,
            "slow": slow,
            "rare": rare,
        }.items()
    }
    assert results["confident_ok"].reasons == () and results["confident_ng"].reasons == ()
    assert results["review_band"].reasons == ("review band", "score near the NG threshold")
    assert results["just_ok"].reasons == ("score near the NG threshold",)
    assert results["just_ng"].reasons == ("score near the NG threshold",)
    assert results["slow"].reasons == ("unusual latency",)
    assert results["rare"].reasons == ("rare defect class",)
    assert results["review_band"].priority == pytest.approx(1.0 + 1 - 0.08 / 0.1)
    assert results["just_ok"].priority == pytest.approx(1 - 0.03 / 0.1)
    assert results["just_ok"].priority > results["just_ng"].priority > results["slow"].priority
    ranked = within_budget(list(results.values()), 2)
    assert ranked == {review_band.frame_id, just_ok.frame_id}
    assert within_budget(list(results.values()), 0) == set()


def test_members_that_disagree_queue_a_frame() -> None:
    selector = ReviewSelector()
    split = selector.consider(scored(0.2, member_scores={"patchcore": 0.4, "destseg": -1.2}))
    agreed = selector.consider(scored(0.2, member_scores={"patchcore": -0.4, "destseg": -1.2}))
    alone = selector.consider(scored(0.2, member_scores={"patchcore": 0.4}))
    assert split.reasons == ("ensemble members disagree",) and split.priority == pytest.approx(0.75)
    assert agreed.reasons == () and alone.reasons == ()


def test_the_policy_refuses_settings_that_make_no_sense() -> None:
    with pytest.raises(ValueError, match="budget"):
        ReviewPolicy(budget_per_day=-1)
    with pytest.raises(ValueError, match="near_band"):
        ReviewPolicy(near_band=0.7)
    with pytest.raises(ValueError, match="latency_factor"):
        ReviewPolicy(latency_factor=1.0)


def test_labelling_keeps_the_daily_budget_and_labels_nothing_twice(tmp_path: Path) -> None:
    labels = open_label_store(f"sqlite:///{tmp_path}/labels.db")
    frames = [scored(0.2 + 0.02 * i, at_s=i) for i in range(20)]  # 0.20 .. 0.58
    frames += [scored(0.95, at_s=30 + i) for i in range(3)]  # confident NG: labelled, not queued
    policy = ReviewPolicy(budget_per_day=4)
    run = label_inspections(frames, labels, None, ReviewSelector(policy), NOW)
    near = [f for f in frames if abs(f.score - 0.5) < 0.1]  # 0.42 .. 0.58: 8 frames
    assert (run.seen, run.queued, run.over_budget) == (23, 4, len(near) - 4)
    queue = labels.query_labels(LabelQuery(status="queued", order="priority"))
    assert [round(label.score, 2) for label in queue] == [0.5, 0.48, 0.52, 0.46]  # the closest to 0.5
    ng_not_queued = [f for f in frames if f.verdict == "NG" and f.frame_id not in {q.frame_id for q in queue}]
    assert run.labelled == 4 + len(ng_not_queued)  # OK frames are labelled only when queued
    assert labels.count_labels(LabelQuery(status="auto")) == len(ng_not_queued)
    again = label_inspections(frames, labels, None, ReviewSelector(policy), NOW + timedelta(minutes=5))
    assert (again.labelled, again.queued, again.already) == (0, 0, run.labelled)
    next_day = label_inspections(
        [scored(0.49, at_s=100)], labels, None, ReviewSelector(replace(policy)), NOW + timedelta(days=1)
    )
    assert next_day.queued == 1  # a new day, a new budget
    labels.close()
