"""Tests for services.vision.metrics: hand-computed cases, sklearn agreement and brute-force references."""

from __future__ import annotations

import itertools
import math
import tracemalloc
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import pytest
from scipy import ndimage
from scipy.stats import rankdata
from sklearn.metrics import average_precision_score, roc_auc_score

from services.vision import metrics
from services.vision.metrics import (
    auroc,
    average_precision,
    evaluate_detection,
    f1_max,
    instance_ap,
    paired_bootstrap,
    pixel_ap,
    pixel_auroc,
    pixel_auroc_and_pro,
    pro_score,
    rates_at_threshold,
)

EIGHT = np.ones((3, 3), dtype=int)  # 8-connectivity structure for scipy's reference labelling


# --------------------------------------------------------------------------------------------------
# image level, by hand
# --------------------------------------------------------------------------------------------------


def test_auroc_hand_computed() -> None:
    # positive 0.35 beats 0.1 but not 0.4, positive 0.8 beats both: 3 of 4 pairs
    assert auroc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == pytest.approx(0.75)


def test_auroc_perfect_inverted_and_ties() -> None:
    labels = np.array([0, 0, 1, 1])
    assert auroc(np.array([0.1, 0.2, 0.3, 0.4]), labels) == 1.0
    assert auroc(np.array([0.4, 0.3, 0.2, 0.1]), labels) == 0.0
    assert auroc(np.full(4, 0.5), labels) == 0.5
    # positives 0.5, 0.9 vs negatives 0.5, 0.2: pairs 0.5 (tie) + 1 + 1 + 1 = 3.5 of 4
    assert auroc(np.array([0.5, 0.5, 0.2, 0.9]), np.array([0, 1, 0, 1])) == pytest.approx(0.875)


def test_auroc_accepts_bool_labels() -> None:
    assert auroc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([False, False, True, True])) == pytest.approx(0.75)


@pytest.mark.parametrize("labels", [[0, 0, 0], [1, 1, 1]])
def test_auroc_one_class_raises(labels: list[int]) -> None:
    with pytest.raises(ValueError, match="only one class"):
        auroc(np.array([0.1, 0.2, 0.3]), np.array(labels))


def test_pixel_auroc_one_class_raises() -> None:
    with pytest.raises(ValueError, match="only one class"):
        pixel_auroc(np.zeros((1, 2, 2)), np.zeros((1, 2, 2), dtype=bool))


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="0/1"):
        auroc(np.array([0.1, 0.2]), np.array([0, 2]))
    with pytest.raises(ValueError, match="NaN"):
        auroc(np.array([0.1, math.nan]), np.array([0, 1]))
    with pytest.raises(ValueError, match="differ in length"):
        auroc(np.array([0.1, 0.2, 0.3]), np.array([0, 1]))
    with pytest.raises(ValueError, match="0/1"):
        pixel_ap(np.zeros((1, 2, 2)), np.full((1, 2, 2), 255, dtype=np.uint8))
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        pixel_ap(np.zeros((2, 2)), np.ones((2, 2), dtype=bool))


def test_average_precision_hand_computed() -> None:
    # descending: 0.8 (pos, P=1, R=.5), 0.4 (neg), 0.35 (pos, P=2/3, R=1) -> .5 * 1 + .5 * 2/3
    assert average_precision(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == pytest.approx(5 / 6)
    # a tie between a positive and a negative at the top: one threshold, precision 1/2
    assert average_precision(np.array([0.9, 0.9, 0.1]), np.array([1, 0, 0])) == pytest.approx(0.5)


def test_average_precision_without_positives_raises() -> None:
    with pytest.raises(ValueError, match="positive"):
        average_precision(np.array([0.1, 0.2]), np.array([0, 0]))


@pytest.mark.parametrize("seed", range(5))
def test_auroc_and_ap_match_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 500
    labels = rng.random(n) < 0.3
    # a coarse grid makes plenty of ties, some of them across classes
    scores = np.round(rng.normal(size=n) + labels * 0.7, 1)
    assert auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert average_precision(scores, labels) == pytest.approx(
        average_precision_score(labels, scores), abs=1e-12
    )
    continuous = rng.random(n)
    assert auroc(continuous, labels) == pytest.approx(roc_auc_score(labels, continuous), abs=1e-12)
    assert average_precision(continuous, labels) == pytest.approx(
        average_precision_score(labels, continuous), abs=1e-12
    )


def test_curve_reductions_across_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    # long curves are reduced block by block; tiny blocks must give the same answer
    monkeypatch.setattr(metrics, "_CHUNK", 7)
    rng = np.random.default_rng(11)
    labels = rng.random(300) < 0.4
    scores = np.round(rng.random(300) + labels * 0.3, 2)
    assert auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert average_precision(scores, labels) == pytest.approx(
        average_precision_score(labels, scores), abs=1e-12
    )


def test_f1_max_hand_computed() -> None:
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.3])
    labels = np.array([1, 0, 1, 1, 0])
    # F1 = 2TP / (TP + FP + P), P = 3:
    # t=.9: 2/4=.5  t=.8: 2/5=.4  t=.7: 4/6  t=.6: 6/7  t=.3: 6/8
    f1, threshold = f1_max(scores, labels)
    assert f1 == pytest.approx(6 / 7)
    assert threshold == pytest.approx(0.6)


def test_f1_max_ties_and_perfect() -> None:
    # perfect separation: F1 1 at the lowest positive score
    assert f1_max(np.array([0.2, 0.7, 0.9]), np.array([0, 1, 1])) == pytest.approx((1.0, 0.7))
    # a positive tied with a negative: at t=.5 TP=2 FP=1 -> 4/5, better than t=.9 (2/3)
    assert f1_max(np.array([0.9, 0.5, 0.5, 0.1]), np.array([1, 1, 0, 0])) == pytest.approx((0.8, 0.5))


def test_rates_at_threshold() -> None:
    scores = np.array([0.1, 0.4, 0.35, 0.8])
    labels = np.array([0, 0, 1, 1])
    # >= .4 is positive: negative .4 is a false positive, positive .35 a false negative
    assert rates_at_threshold(scores, labels, 0.4) == pytest.approx((0.5, 0.5))
    assert rates_at_threshold(scores, labels, 0.0) == pytest.approx((1.0, 0.0))
    assert rates_at_threshold(scores, labels, 0.81) == pytest.approx((0.0, 1.0))
    fpr, fnr = rates_at_threshold(np.array([0.2, 0.6]), np.array([1, 1]), 0.5)
    assert math.isnan(fpr)
    assert fnr == pytest.approx(0.5)
    fpr, fnr = rates_at_threshold(np.array([0.2, 0.6]), np.array([0, 0]), 0.5)
    assert fpr == pytest.approx(0.5)
    assert math.isnan(fnr)


# --------------------------------------------------------------------------------------------------
# PRO
# --------------------------------------------------------------------------------------------------


def _two_region_image(tied_negative: bool) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
    """One 2x7 image: region A (column 0), region B (column 3), 10 defect-free pixels.

    A scores 0.9, 0.9; B scores 0.8, 0.1; negatives: one 0.7, then either nine 0.0 or one 0.1
    (tied with B's low pixel) and eight 0.0.
    """
    mask = np.zeros((2, 7), dtype=bool)
    mask[:, 0] = True
    mask[:, 3] = True
    score = np.zeros((2, 7))
    score[:, 0] = 0.9
    score[0, 3], score[1, 3] = 0.8, 0.1
    score[0, 5] = 0.7
    if tied_negative:
        score[1, 6] = 0.1
    return score[None], mask[None]


def test_pro_perfect_map_is_one() -> None:
    rng = np.random.default_rng(1)
    masks = np.zeros((3, 16, 16), dtype=bool)
    masks[0, 2:5, 2:6] = True
    masks[0, 10:12, 9:15] = True
    masks[2, 7:9, 1:3] = True
    maps = np.where(masks, 1.0 + rng.random(masks.shape), rng.random(masks.shape))
    assert pro_score(maps, masks) == pytest.approx(1.0)
    assert pro_score(maps, masks, fpr_limit=0.01) == pytest.approx(1.0)


def test_pro_hand_computed() -> None:
    maps, masks = _two_region_image(tied_negative=False)
    # curve (FPR, PRO): (0,0) (0,.5)@.9 (0,.75)@.8 (.1,.75)@.7 (.1,1)@.1 (1,1)@0
    # to .3: .1 * .75 + .2 * 1 = .275
    assert pro_score(maps, masks, fpr_limit=0.3) == pytest.approx(0.275 / 0.3)
    assert pro_score(maps, masks, fpr_limit=0.05) == pytest.approx(0.75)


def test_pro_interpolates_at_the_limit() -> None:
    maps, masks = _two_region_image(tied_negative=True)
    # the tie at .1 makes a sloped segment (.1,.75) -> (.2,1): at .15 the curve is .875
    # area = .1 * .75 + .05 * (.75 + .875) / 2 = .115625
    assert pro_score(maps, masks, fpr_limit=0.15) == pytest.approx(0.115625 / 0.15)


def test_pro_uses_eight_connectivity() -> None:
    mask = np.zeros((1, 5, 5), dtype=bool)
    mask[0, 0, 0] = mask[0, 1, 1] = mask[0, 2, 2] = True  # one 3-pixel diagonal region
    mask[0, 4, 4] = True  # a separate 1-pixel region
    score = np.zeros((1, 5, 5))  # defect-free pixels at 0
    score[0, 0, 0] = score[0, 4, 4] = 1.0
    score[0, 1, 1] = score[0, 2, 2] = -1.0  # below every defect-free pixel
    # curve (0,0) (0,2/3)@1 (1,2/3)@0 (1,1)@-1: 8-connected regions give (1/3 + 1) / 2 = 2/3 up to FPR 1;
    # 4-connected ones (four single pixels, two found) would give 1/2
    assert pro_score(score, mask, fpr_limit=0.5) == pytest.approx(2 / 3)


def test_pro_nan_without_regions() -> None:
    assert math.isnan(pro_score(np.random.default_rng(0).random((2, 4, 4)), np.zeros((2, 4, 4), dtype=bool)))


def _reference_pro(maps: npt.NDArray[np.float64], masks: npt.NDArray[np.bool_], limit: float) -> float:
    """Brute force: every distinct threshold, regions from scipy, then trapezoids clipped at the limit."""
    regions = []
    for image_map, image_mask in zip(maps, masks, strict=True):
        labelled, count = ndimage.label(image_mask, structure=EIGHT)
        regions += [image_map[labelled == r] for r in range(1, count + 1)]
    negatives = maps[~masks]
    points = [(0.0, 0.0)]
    for t in np.unique(maps)[::-1]:
        points.append((float(np.mean(negatives >= t)), float(np.mean([np.mean(r >= t) for r in regions]))))
    area = 0.0
    for (x0, y0), (x1, y1) in itertools.pairwise(points):
        if x0 >= limit:
            break
        if x1 > limit:
            y1 = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
            x1 = limit
        area += (x1 - x0) * (y0 + y1) / 2
    return area / limit


@pytest.mark.parametrize("seed", range(4))
def test_pro_matches_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    masks = rng.random((3, 12, 12)) < 0.12
    masks = ndimage.binary_dilation(masks, iterations=1) & (rng.random((3, 12, 12)) < 0.8)
    maps = np.round(rng.random((3, 12, 12)) + masks * 0.4, 2)  # ties included
    for limit in (0.05, 0.3, 1.0):
        assert pro_score(maps, masks, fpr_limit=limit) == pytest.approx(
            _reference_pro(maps, masks, limit), abs=1e-9
        )
        together = pixel_auroc_and_pro(maps, masks, fpr_limit=limit)
        assert together == (pixel_auroc(maps, masks), pro_score(maps, masks, fpr_limit=limit))
    assert pixel_auroc(maps, masks) == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()))


# --------------------------------------------------------------------------------------------------
# instance AP
# --------------------------------------------------------------------------------------------------


def _two_instance_image() -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
    """3x6 image: A = (0,0),(0,1) scores .9,.8; B = rows 0-1 x cols 4-5 scores .7,.6,.2,.1;
    the 12 defect-free pixels are 0 except one at .85."""
    mask = np.zeros((3, 6), dtype=bool)
    mask[0, 0:2] = True
    mask[0:2, 4:6] = True
    score = np.zeros((3, 6))
    score[0, 0:2] = [0.9, 0.8]
    score[0, 4:6] = [0.7, 0.6]
    score[1, 4:6] = [0.2, 0.1]
    score[2, 2] = 0.85
    return score[None], mask[None]


def test_instance_ap_hand_computed() -> None:
    maps, masks = _two_instance_image()
    # ioi .5: A's critical threshold is its 1st pixel (.9), B's its 2nd (.6)
    # precision(.9) = 1/1; precision(.6) = {.9,.85,.8,.7,.6} -> 4/5
    # IAP = .5 * 1 + .5 * .8 = .9; recall >= .9 needs both instances -> precision(.6) = .8
    iap, iap90 = instance_ap(maps, masks)
    assert iap == pytest.approx(0.9)
    assert iap90 == pytest.approx(0.8)
    # recall .5 is reached by A alone at .9
    assert instance_ap(maps, masks, recall_level=0.5)[1] == pytest.approx(1.0)
    # ioi 1: critical thresholds .8 (A) and .1 (B); precision(.8) = 2/3, precision(.1) = 6/7
    iap, iap90 = instance_ap(maps, masks, ioi=1.0)
    assert iap == pytest.approx((2 / 3 + 6 / 7) / 2)
    assert iap90 == pytest.approx(6 / 7)


def test_instance_ap_eight_connectivity() -> None:
    mask = np.zeros((1, 4, 4), dtype=bool)
    mask[0, 0, 0] = mask[0, 1, 1] = True  # diagonal neighbours: one instance
    score = np.zeros((1, 4, 4))
    score[0, 0, 0], score[0, 1, 1] = 0.9, 0.1
    score[0, 3, 3] = 0.5  # a negative between the two
    # one instance, critical threshold .9 (1 of 2 pixels), precision 1 -> IAP 1
    # (4-connectivity would give two instances and (1 + 2/3) / 2)
    assert instance_ap(score, mask) == pytest.approx((1.0, 1.0))


def _reference_instance_ap(
    maps: npt.NDArray[np.float64], masks: npt.NDArray[np.bool_], ioi: float, level: float
) -> tuple[float, float]:
    """Brute force over every distinct threshold: detected instances, recall and pixel precision."""
    instances = []
    for image_map, image_mask in zip(maps, masks, strict=True):
        labelled, count = ndimage.label(image_mask, structure=EIGHT)
        instances += [image_map[labelled == r] for r in range(1, count + 1)]
    iap, iap_at, previous_recall = 0.0, math.nan, 0.0
    for t in np.unique(maps)[::-1]:
        above = maps >= t
        precision = np.count_nonzero(above & masks) / np.count_nonzero(above)
        recall = float(np.mean([np.mean(inst >= t) >= ioi for inst in instances]))
        iap += precision * (recall - previous_recall)
        if math.isnan(iap_at) and recall >= level:
            iap_at = precision
        previous_recall = recall
    return iap, iap_at


@pytest.mark.parametrize("seed", range(4))
def test_instance_ap_matches_brute_force(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    masks = ndimage.binary_dilation(rng.random((3, 14, 14)) < 0.05, iterations=1)
    maps = np.round(rng.random((3, 14, 14)) + masks * 0.3, 2)
    for ioi, level in ((0.5, 0.9), (0.3, 0.5), (1.0, 1.0)):
        assert instance_ap(maps, masks, ioi=ioi, recall_level=level) == pytest.approx(
            _reference_instance_ap(maps, masks, ioi, level), abs=1e-12
        )


def test_instance_ap_nan_without_instances() -> None:
    iap, iap90 = instance_ap(np.ones((1, 3, 3)), np.zeros((1, 3, 3), dtype=bool))
    assert math.isnan(iap)
    assert math.isnan(iap90)


# --------------------------------------------------------------------------------------------------
# pixel level and the whole evaluation
# --------------------------------------------------------------------------------------------------


def test_pixel_metrics_match_flattened_sklearn() -> None:
    rng = np.random.default_rng(7)
    masks = rng.random((4, 32, 32)) < 0.1
    maps = np.round(rng.random((4, 32, 32)) + masks * 0.5, 2).astype(np.float32)
    assert pixel_auroc(maps, masks) == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-12)
    assert pixel_ap(maps, masks) == pytest.approx(
        average_precision_score(masks.ravel(), maps.ravel()), abs=1e-12
    )


def test_pixel_metrics_on_millions_of_pixels() -> None:
    # 4 million pixels on 1,000 score levels; references from per-level counts (no sorting)
    rng = np.random.default_rng(3)
    shape = (16, 500, 500)
    masks = np.zeros(shape, dtype=bool)
    masks[:, 100:180, 200:300] = True
    levels = rng.integers(0, 1000, size=shape)
    levels = np.minimum(levels + masks * 300, 999)
    maps = (levels / 1000).astype(np.float32)

    pos = np.bincount(levels[masks], minlength=1000).astype(np.float64)
    neg = np.bincount(levels[~masks], minlength=1000).astype(np.float64)
    neg_below = np.concatenate(([0.0], np.cumsum(neg)[:-1]))
    expected_auroc = float(np.sum(pos * (neg_below + 0.5 * neg)) / (pos.sum() * neg.sum()))
    tp = np.cumsum(pos[::-1])
    fp = np.cumsum(neg[::-1])
    nonempty = (pos + neg)[::-1] > 0
    expected_ap = float(np.sum((pos[::-1] / pos.sum() * tp / np.maximum(tp + fp, 1))[nonempty]))

    assert pixel_auroc(maps, masks) == pytest.approx(expected_auroc, abs=1e-12)
    assert pixel_ap(maps, masks) == pytest.approx(expected_ap, abs=1e-12)


def test_pixel_auroc_memory_on_distinct_scores() -> None:
    # nearly all-distinct float32 scores are the worst case for memory; bound the peak per pixel
    rng = np.random.default_rng(4)
    shape = (4, 500, 500)
    masks = rng.random(shape) < 0.05
    maps = (rng.random(shape, dtype=np.float32) + masks * np.float32(0.2)).astype(np.float32)
    tracemalloc.start()
    try:
        got = pixel_auroc(maps, masks)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 32 * maps.size, f"peak {peak / maps.size:.1f} bytes per pixel"
    ranks = rankdata(maps.ravel())
    n_pos = int(masks.sum())
    n_neg = maps.size - n_pos
    expected = (ranks[masks.ravel()].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    assert got == pytest.approx(expected, abs=1e-9)


def test_evaluate_detection_keys_and_values() -> None:
    maps, masks = _two_instance_image()
    maps = np.concatenate([maps, np.zeros_like(maps)])
    masks = np.concatenate([masks, np.zeros_like(masks)])
    image_scores = np.array([0.9, 0.2])
    image_labels = np.array([1, 0])
    result = evaluate_detection(image_scores, image_labels, maps, masks, threshold=0.5)
    assert list(result) == [
        "image_auroc", "image_ap", "image_f1", "pixel_auroc", "pixel_ap", "pro", "iap", "iap90", "fpr", "fnr",
    ]  # fmt: skip
    assert result["image_auroc"] == 1.0
    assert result["image_ap"] == 1.0
    assert result["image_f1"] == 1.0
    assert result["fpr"] == 0.0
    assert result["fnr"] == 0.0
    assert result["iap"] == pytest.approx(0.9)
    assert result["iap90"] == pytest.approx(0.8)
    assert result["pixel_auroc"] == pytest.approx(pixel_auroc(maps, masks))
    assert result["pixel_ap"] == pytest.approx(pixel_ap(maps, masks))
    assert result["pro"] == pytest.approx(pro_score(maps, masks))


def test_evaluate_detection_pixel_metrics_nan_without_defect_pixels() -> None:
    rng = np.random.default_rng(5)
    maps = rng.random((3, 8, 8))
    masks = np.zeros((3, 8, 8), dtype=bool)
    result = evaluate_detection(np.array([0.1, 0.7, 0.8]), np.array([0, 1, 1]), maps, masks, threshold=0.75)
    for key in ("pixel_auroc", "pixel_ap", "pro", "iap", "iap90"):
        assert math.isnan(result[key]), key
    assert result["image_auroc"] == 1.0
    assert result["fpr"] == 0.0
    assert result["fnr"] == 0.5


# --------------------------------------------------------------------------------------------------
# paired bootstrap
# --------------------------------------------------------------------------------------------------


def test_paired_bootstrap_keeps_each_label_count_and_draws_within_it() -> None:
    labels = np.array([0, 1, 0, 0, 1, 0, 1, 0])
    seen: list[npt.NDArray[np.int64]] = []

    def measure(indices: npt.NDArray[np.int64]) -> list[float]:
        seen.append(indices)
        return [float(labels[indices].sum())]

    values = paired_bootstrap(measure, labels, rounds=50, seed=3)
    assert values.shape == (50, 1)
    assert np.all(values == 3)  # three defective images in every resample
    assert all(len(indices) == 8 for indices in seen)
    drawn = np.concatenate(seen)
    assert set(drawn[labels[drawn] == 1]) == {1, 4, 6}  # every defective image drawn at some point
    assert any(len(set(indices)) < 8 for indices in seen)  # with replacement


def test_paired_bootstrap_of_a_model_against_itself_is_zero_and_against_chance_is_positive() -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 100)
    good_model = labels + rng.normal(0, 0.6, labels.size)  # AUROC about 0.88
    coin = rng.normal(0, 1, labels.size)  # AUROC about 0.5

    def against(other: npt.NDArray[np.float64]) -> Callable[[npt.NDArray[np.int64]], list[float]]:
        return lambda i: [auroc(good_model[i], labels[i]) - auroc(other[i], labels[i])]

    same = paired_bootstrap(against(good_model), labels, rounds=40)
    assert np.all(same == 0)
    better = paired_bootstrap(against(coin), labels, rounds=200, seed=1)[:, 0]
    measured = auroc(good_model, labels) - auroc(coin, labels)
    assert 0.25 < measured < 0.5
    assert np.percentile(better, 2.5) > 0.1  # far from zero: the difference is real
    assert abs(better.mean() - measured) < 0.02
    assert 0.01 < better.std() < 0.06  # the textbook spread of an AUROC difference at 100 + 100


def test_paired_bootstrap_spread_shrinks_with_more_images_and_repeats_with_its_seed() -> None:
    rng = np.random.default_rng(5)

    def spread(n: int) -> float:
        labels = np.repeat([0, 1], n)
        a = labels + rng.normal(0, 1, labels.size)
        b = labels + rng.normal(0, 1, labels.size)
        diffs = paired_bootstrap(lambda i: [auroc(a[i], labels[i]) - auroc(b[i], labels[i])], labels, 150)
        return float(diffs.std())

    assert spread(400) < 0.6 * spread(40)  # about 1/sqrt(10) of it
    labels = np.array([0, 0, 1, 1, 1])
    first = paired_bootstrap(lambda i: [float(i.sum())], labels, rounds=5, seed=9)
    assert np.array_equal(first, paired_bootstrap(lambda i: [float(i.sum())], labels, rounds=5, seed=9))
    with pytest.raises(ValueError, match="rounds"):
        paired_bootstrap(lambda i: [0.0], labels, rounds=0)
