"""Evaluation metrics for anomaly detection: image level, pixel level, PRO and instance AP.

Everything here is pure numpy (OpenCV only for connected components) and does no I/O.

Conventions:

* ``scores`` is a 1-D float array, ``labels`` a 1-D bool or 0/1 array of the same length
  (1 / True = anomalous).
* ``maps`` is a float array ``(N, H, W)`` of per-pixel anomaly scores, ``masks`` a bool or 0/1 array
  of the same shape (1 / True = defect pixel).
* A sample is predicted anomalous when ``score >= threshold``.
* Pixel-level functions work on float32 copies of the maps (no copy when they already are float32) and
  sort the scores once (a sort, not an argsort).  Peak memory besides the inputs is about 5 bytes per
  pixel plus 16 bytes per distinct score (under 0.6 GB for 25 million all-distinct scores), so tens
  of millions of pixels are fine.  Scores must not be NaN (infinities are allowed).

All ranking metrics are exact (no threshold binning): ties are handled like scikit-learn, i.e. tied
scores form one threshold and the ROC / PRO curves are linear between consecutive thresholds.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.floating]
IntArray = npt.NDArray[np.signedinteger]

__all__ = [
    "auroc",
    "average_precision",
    "evaluate_detection",
    "f1_max",
    "instance_ap",
    "paired_bootstrap",
    "pixel_ap",
    "pixel_auroc",
    "pixel_auroc_and_pro",
    "pro_score",
    "rates_at_threshold",
]

_CHUNK = 1 << 18  # curve points per block in the reductions over a curve

# Guard for ceil(fraction * count) when the product is an integer up to float rounding (0.3 * 10).
_CEIL_DECIMALS = 9


# --------------------------------------------------------------------------------------------------
# input checks
# --------------------------------------------------------------------------------------------------


def _as_binary(values: npt.ArrayLike, name: str) -> npt.NDArray[np.bool_]:
    """``values`` as a bool array; anything other than bool or exactly 0/1 is an error."""
    arr = np.asarray(values)
    if arr.dtype == np.bool_:
        return arr
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ValueError(f"{name} must be bool or 0/1 numbers, got dtype {arr.dtype}")
    positive = arr == 1
    if not np.all(positive | (arr == 0)):
        raise ValueError(f"{name} must contain only 0/1 (or bool) values")
    return positive


def _check_no_nan(scores: FloatArray, name: str) -> None:
    if np.isnan(scores).any():
        raise ValueError(f"{name} contain NaN")


def _image_inputs(scores: npt.ArrayLike, labels: npt.ArrayLike) -> tuple[FloatArray, npt.NDArray[np.bool_]]:
    s = np.asarray(scores, dtype=np.float64)
    y = _as_binary(labels, "labels")
    if s.ndim != 1 or y.ndim != 1:
        raise ValueError(f"scores and labels must be 1-D, got shapes {s.shape} and {y.shape}")
    if s.shape != y.shape:
        raise ValueError(f"scores and labels differ in length: {s.shape[0]} vs {y.shape[0]}")
    if s.size == 0:
        raise ValueError("scores and labels are empty")
    _check_no_nan(s, "scores")
    return s, y


def _pixel_inputs(maps: npt.ArrayLike, masks: npt.ArrayLike) -> tuple[FloatArray, npt.NDArray[np.bool_]]:
    m = np.asarray(maps, dtype=np.float32)
    g = _as_binary(masks, "masks")
    if m.ndim != 3:
        raise ValueError(f"maps must be (N, H, W), got shape {m.shape}")
    if m.shape != g.shape:
        raise ValueError(f"maps and masks differ in shape: {m.shape} vs {g.shape}")
    if m.size == 0:
        raise ValueError("maps and masks are empty")
    _check_no_nan(m, "maps")
    return m, g


def _require_both_classes(n_pos: int, n_neg: int, what: str) -> None:
    if n_pos == 0 or n_neg == 0:
        present = "positive (1)" if n_pos else "negative (0)"
        raise ValueError(
            f"{what} is undefined when only one class is present: all {n_pos + n_neg} labels are {present}"
        )


def _ceil_fraction(fraction: float, count: int | IntArray) -> IntArray:
    """``ceil(fraction * count)`` clamped to ``[1, count]``, robust to float error in the product."""
    n = np.asarray(count, dtype=np.int64)
    k = np.ceil(np.round(fraction * n.astype(np.float64), _CEIL_DECIMALS)).astype(np.int64)
    return np.clip(k, 1, np.maximum(n, 1))


# --------------------------------------------------------------------------------------------------
# the shared threshold curve
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Curve:
    """Counts at every distinct score, thresholds descending (``score >= thresholds[k]`` is positive).

    ``tps[k]`` / ``fps[k]``: positives / negatives with score >= ``thresholds[k]``.  The last entry
    (the lowest score) has ``tps[-1] == n_pos`` and ``fps[-1] == n_neg``.
    """

    thresholds: FloatArray
    tps: IntArray
    fps: IntArray
    n_pos: int
    n_neg: int

    def index_of(self, values: FloatArray) -> IntArray:
        """Indices into the curve of thresholds that are exactly ``values`` (which must be scores)."""
        ascending = self.thresholds[::-1]
        pos = np.searchsorted(ascending, values, side="left")
        return (self.thresholds.size - 1 - pos).astype(np.int64)


def _slices(size: int) -> Iterator[slice]:
    """Consecutive blocks of a curve, so reductions over it need only a block's worth of temporaries."""
    for lo in range(0, size, _CHUNK):
        yield slice(lo, min(lo + _CHUNK, size))


def _curve(scores: FloatArray, positive: npt.NDArray[np.bool_]) -> _Curve:
    """Build the threshold curve with one full sort of ``scores`` (1-D, no NaN).

    The scores are sorted (not argsorted, so no 8-byte index per pixel); the positives' scores are
    then located among the distinct values with a binary search, cheap as positives are few.  Counts
    are int32 below 2**31 samples.  Peak memory is about 5 bytes per sample plus 16 bytes per distinct
    score, the curve itself 12 bytes per distinct score.
    """
    n = scores.size
    count_dtype: type[np.signedinteger] = np.int32 if n < np.iinfo(np.int32).max else np.int64
    ordered = np.sort(scores)
    is_start = np.empty(n, dtype=np.bool_)
    is_start[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=is_start[1:])
    starts = np.flatnonzero(is_start).astype(count_dtype)  # first index of every distinct value
    del is_start
    thresholds_asc = ordered[starts]
    del ordered
    # positives per distinct value (ascending), accumulated from the top
    pos_scores = scores[positive]
    n_pos = int(pos_scores.size)
    pos_counts_asc = np.bincount(
        np.searchsorted(thresholds_asc, pos_scores, side="left"), minlength=thresholds_asc.size
    )
    del pos_scores
    tps = np.cumsum(pos_counts_asc[::-1], dtype=count_dtype)
    del pos_counts_asc
    # n - starts[k] samples have score >= thresholds_asc[k]; turn the buffer into fps in place
    fps = starts[::-1]
    np.subtract(n, fps, out=fps)
    fps -= tps
    return _Curve(thresholds=thresholds_asc[::-1], tps=tps, fps=fps, n_pos=n_pos, n_neg=n - n_pos)


def _auroc_from_curve(curve: _Curve) -> float:
    _require_both_classes(curve.n_pos, curve.n_neg, "ROC AUC")
    # trapezoids between consecutive ROC points, starting at (0, 0); twice the area, in exact integers
    twice_area = 0
    last_tp = last_fp = 0
    for block in _slices(curve.tps.size):
        tps = np.concatenate(([last_tp], curve.tps[block])).astype(np.int64)
        fps = np.concatenate(([last_fp], curve.fps[block])).astype(np.int64)
        twice_area += int(np.dot(np.diff(fps), tps[1:] + tps[:-1]))
        last_tp, last_fp = int(tps[-1]), int(fps[-1])
    return twice_area / (2.0 * curve.n_pos * curve.n_neg)


def _ap_from_curve(curve: _Curve) -> float:
    if curve.n_pos == 0:
        raise ValueError("average precision is undefined without positive labels")
    # sum over thresholds of precision * recall increase (no interpolation), as scikit-learn
    total = 0.0
    last_tp = 0.0
    for block in _slices(curve.tps.size):
        tps = curve.tps[block].astype(np.float64)
        precision = tps / (tps + curve.fps[block])
        total += float(np.dot(np.diff(tps, prepend=last_tp), precision))
        last_tp = float(tps[-1])
    return total / curve.n_pos


# --------------------------------------------------------------------------------------------------
# image level
# --------------------------------------------------------------------------------------------------


def auroc(scores: npt.ArrayLike, labels: npt.ArrayLike) -> float:
    """Exact area under the ROC curve (ties count one half), equal to ``sklearn.metrics.roc_auc_score``.

    Raises ``ValueError`` when only one class is present.
    """
    s, y = _image_inputs(scores, labels)
    return _auroc_from_curve(_curve(s, y))


def average_precision(scores: npt.ArrayLike, labels: npt.ArrayLike) -> float:
    """Average precision ``sum_k (R_k - R_{k-1}) * P_k`` over thresholds, no interpolation.

    Equal to ``sklearn.metrics.average_precision_score``.  Raises ``ValueError`` without positives.
    """
    s, y = _image_inputs(scores, labels)
    return _ap_from_curve(_curve(s, y))


def f1_max(scores: npt.ArrayLike, labels: npt.ArrayLike) -> tuple[float, float]:
    """Best F1 over all thresholds and the threshold giving it (positive when ``score >= threshold``).

    Thresholds are the distinct scores; on a tie in F1 the highest threshold wins.  Raises
    ``ValueError`` without positives (F1 is then 0 or undefined everywhere).
    """
    s, y = _image_inputs(scores, labels)
    curve = _curve(s, y)
    if curve.n_pos == 0:
        raise ValueError("F1 is undefined without positive labels")
    # F1 = 2 TP / (2 TP + FP + FN) = 2 TP / (TP + FP + P)
    f1 = 2.0 * curve.tps / (curve.tps + curve.fps + curve.n_pos)
    best = int(np.argmax(f1))
    return float(f1[best]), float(curve.thresholds[best])


def rates_at_threshold(scores: npt.ArrayLike, labels: npt.ArrayLike, threshold: float) -> tuple[float, float]:
    """(false-positive rate, false-negative rate) predicting positive when ``score >= threshold``.

    A rate whose denominator is 0 (no negatives for FPR, no positives for FNR) is NaN.
    """
    s, y = _image_inputs(scores, labels)
    predicted = s >= threshold
    n_pos = int(np.count_nonzero(y))
    n_neg = int(y.size - n_pos)
    fp = int(np.count_nonzero(predicted & ~y))
    fn = int(np.count_nonzero(~predicted & y))
    fpr = fp / n_neg if n_neg else math.nan
    fnr = fn / n_pos if n_pos else math.nan
    return fpr, fnr


# --------------------------------------------------------------------------------------------------
# pixel level
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Regions:
    """Ground-truth connected components (8-connectivity) of all images, over defect pixels only.

    ``ids[i]`` is the region of the i-th defect pixel in ``maps[masks]`` order (0 .. count-1),
    ``scores[i]`` its score, ``sizes[r]`` the pixel count of region r.
    """

    ids: IntArray
    scores: FloatArray
    sizes: IntArray

    @property
    def count(self) -> int:
        return int(self.sizes.size)


def _regions(maps: FloatArray, masks: npt.NDArray[np.bool_]) -> _Regions:
    ids: list[IntArray] = []
    scores: list[FloatArray] = []
    offset = 0
    for image_map, image_mask in zip(maps, masks, strict=True):
        if not image_mask.any():
            continue
        n_labels, labelled = cv2.connectedComponents(image_mask.astype(np.uint8), connectivity=8)
        ids.append(labelled[image_mask].astype(np.int64) - 1 + offset)
        scores.append(image_map[image_mask])
        offset += int(n_labels) - 1
    if not ids:
        return _Regions(np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0, np.int64))
    all_ids = np.concatenate(ids)
    return _Regions(all_ids, np.concatenate(scores), np.bincount(all_ids, minlength=offset).astype(np.int64))


def _pixel_curve(maps: FloatArray, masks: npt.NDArray[np.bool_]) -> _Curve:
    return _curve(maps.reshape(-1), masks.reshape(-1))


def pixel_auroc(maps: npt.ArrayLike, masks: npt.ArrayLike) -> float:
    """ROC AUC over all pixels of all images (see :func:`auroc`); ``ValueError`` if one class only."""
    m, g = _pixel_inputs(maps, masks)
    return _auroc_from_curve(_pixel_curve(m, g))


def pixel_ap(maps: npt.ArrayLike, masks: npt.ArrayLike) -> float:
    """Average precision over all pixels of all images (see :func:`average_precision`)."""
    m, g = _pixel_inputs(maps, masks)
    return _ap_from_curve(_pixel_curve(m, g))


def _trapezoid_to(x: FloatArray, y: FloatArray, x_max: float) -> float:
    """Area under the piecewise-linear curve (x non-decreasing) from ``x[0]`` to ``x_max``.

    The curve is interpolated linearly at exactly ``x_max`` when it falls between two points.
    """
    end = int(np.searchsorted(x, x_max, side="right"))  # first point with x > x_max
    xs, ys = x[:end], y[:end]
    area = float(np.sum(np.diff(xs) * (ys[1:] + ys[:-1])) / 2.0)
    if end < x.size:
        x0, y0, x1, y1 = float(x[end - 1]), float(y[end - 1]), float(x[end]), float(y[end])
        y_at = y0 + (y1 - y0) * (x_max - x0) / (x1 - x0)
        area += (x_max - x0) * (y0 + y_at) / 2.0
    return area


def _pro_from(curve: _Curve, regions: _Regions, fpr_limit: float) -> float:
    if regions.count == 0 or curve.n_neg == 0:
        return math.nan
    # Each defect pixel adds 1 / (region size * region count) to PRO once the threshold reaches it.
    # The tps[k] defect pixels above threshold k are the first tps[k] of them in descending score order
    # (whatever the order among ties), so a cumulative sum over that order gives PRO at every threshold.
    weights = 1.0 / (regions.sizes.astype(np.float64) * regions.count)
    order = np.argsort(regions.scores, kind="stable")[::-1]
    pro_cumulative = np.concatenate(([0.0], np.cumsum(weights[regions.ids[order]])))
    # only the curve up to the first point past the FPR limit matters (one more point for rounding)
    end = min(int(np.searchsorted(curve.fps, fpr_limit * curve.n_neg, side="right")) + 2, curve.fps.size)
    pro = np.minimum(pro_cumulative[curve.tps[:end]], 1.0)
    fpr = curve.fps[:end] / float(curve.n_neg)
    x = np.concatenate(([0.0], fpr))
    y = np.concatenate(([0.0], pro))
    return _trapezoid_to(x, y, fpr_limit) / fpr_limit


def pro_score(maps: npt.ArrayLike, masks: npt.ArrayLike, fpr_limit: float = 0.3) -> float:
    """Normalised area under the PRO curve up to ``fpr_limit`` (MVTec AD's AU-PRO), computed exactly.

    Regions are the 8-connected components of every image's mask.  At a threshold t, PRO(t) is the mean
    over all regions (of all images, each region weighted equally) of the fraction of the region's
    pixels with score >= t, and FPR(t) is the fraction of defect-free pixels (0 in the mask, all
    images together) with score >= t.  The curve is evaluated at every distinct score (no threshold
    sweep or binning, the same as the official MVTec AD evaluation script), starts at (0, 0), is linear
    between points, and is integrated with the trapezoid rule from FPR 0 to ``fpr_limit``
    (interpolated at exactly ``fpr_limit``); the area is divided by ``fpr_limit`` so a perfect map
    scores 1.0.

    Returns NaN when there are no defect regions (or no defect-free pixels).
    """
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    m, g = _pixel_inputs(maps, masks)
    return _pro_from(_pixel_curve(m, g), _regions(m, g), fpr_limit)


def pixel_auroc_and_pro(
    maps: npt.ArrayLike, masks: npt.ArrayLike, fpr_limit: float = 0.3
) -> tuple[float, float]:
    """:func:`pixel_auroc` and :func:`pro_score` from one sort of the pixels (half the time and
    half the transient memory of the two calls)."""
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    m, g = _pixel_inputs(maps, masks)
    curve = _pixel_curve(m, g)
    return _auroc_from_curve(curve), _pro_from(curve, _regions(m, g), fpr_limit)


def _instance_ap_from(
    curve: _Curve, regions: _Regions, ioi: float, recall_level: float
) -> tuple[float, float]:
    if regions.count == 0:
        return math.nan, math.nan
    # group pixels by region, scores descending inside each region
    order = np.lexsort((-regions.scores, regions.ids))
    sorted_scores = regions.scores[order]
    starts = np.concatenate(([0], np.cumsum(regions.sizes)[:-1]))
    critical = sorted_scores[starts + _ceil_fraction(ioi, regions.sizes) - 1]
    at = curve.index_of(critical)
    precision = curve.tps[at] / (curve.tps[at] + curve.fps[at]).astype(np.float64)
    # Every instance adds 1/count recall at its critical threshold, so IAP is the mean precision there.
    iap = float(np.mean(precision))
    # The highest threshold with recall >= recall_level is the k-th highest critical threshold.
    k = int(_ceil_fraction(recall_level, regions.count))
    by_threshold = np.argsort(critical, kind="stable")[::-1]
    iap_at = float(precision[by_threshold[k - 1]])
    return iap, iap_at


def instance_ap(
    maps: npt.ArrayLike, masks: npt.ArrayLike, ioi: float = 0.5, recall_level: float = 0.9
) -> tuple[float, float]:
    """Instance average precision (IAP) and IAP@``recall_level`` as in DeSTSeg (Zhang et al., CVPR 2023).

    Definition:

    * Every 8-connected component of every image's mask is one instance.
    * At a threshold t an instance is detected when at least a fraction ``ioi`` of its pixels have
      score >= t.  An instance of n pixels therefore has a critical threshold: the score of its
      ``ceil(ioi * n)``-th highest pixel; it is detected exactly when t <= that score.
    * Instance recall(t) = detected instances / all instances.
    * precision(t) = pixel precision over all pixels of all images: pixels with score >= t that are in
      a mask / all pixels with score >= t.
    * IAP = sum_k precision(t_k) * (recall_k - recall_{k-1}) over the instances sorted by critical
      threshold t_k descending (recall_0 = 0), i.e. the mean over instances of the precision at their
      critical thresholds.
    * IAP@90 (``recall_level`` = 0.9) = precision at the highest threshold whose instance recall is
      >= ``recall_level``, i.e. at the ``ceil(recall_level * instances)``-th highest critical threshold.

    Returns ``(IAP, IAP@recall_level)``, both NaN when there are no instances.
    """
    if not 0.0 < ioi <= 1.0:
        raise ValueError(f"ioi must be in (0, 1], got {ioi}")
    if not 0.0 < recall_level <= 1.0:
        raise ValueError(f"recall_level must be in (0, 1], got {recall_level}")
    m, g = _pixel_inputs(maps, masks)
    return _instance_ap_from(_pixel_curve(m, g), _regions(m, g), ioi, recall_level)


# --------------------------------------------------------------------------------------------------
# everything at once
# --------------------------------------------------------------------------------------------------


def evaluate_detection(
    image_scores: npt.ArrayLike,
    image_labels: npt.ArrayLike,
    maps: npt.ArrayLike,
    masks: npt.ArrayLike,
    threshold: float,
) -> dict[str, float]:
    """All metrics of one evaluation run, sorting the pixels once.

    Keys: ``image_auroc``, ``image_ap``, ``image_f1`` (best F1), ``pixel_auroc``, ``pixel_ap``, ``pro``
    (FPR limit 0.3), ``iap``, ``iap90``, and ``fpr`` / ``fnr`` of the image scores at ``threshold``.
    Image metrics raise ``ValueError`` when the image labels hold one class only; pixel metrics are NaN
    when the masks have no defect pixel (and pixel AUROC / PRO also when they have no defect-free one).
    """
    s, y = _image_inputs(image_scores, image_labels)
    image_curve = _curve(s, y)
    f1, _ = f1_max(s, y)
    fpr, fnr = rates_at_threshold(s, y, threshold)
    result = {
        "image_auroc": _auroc_from_curve(image_curve),
        "image_ap": _ap_from_curve(image_curve),
        "image_f1": f1,
    }

    m, g = _pixel_inputs(maps, masks)
    if m.shape[0] != s.size:
        raise ValueError(f"{s.size} image scores but {m.shape[0]} maps")
    pixel_curve = _pixel_curve(m, g)
    if pixel_curve.n_pos == 0:
        result.update(pixel_auroc=math.nan, pixel_ap=math.nan, pro=math.nan, iap=math.nan, iap90=math.nan)
    else:
        regions = _regions(m, g)
        iap, iap90 = _instance_ap_from(pixel_curve, regions, 0.5, 0.9)
        result.update(
            pixel_auroc=_auroc_from_curve(pixel_curve) if pixel_curve.n_neg else math.nan,
            pixel_ap=_ap_from_curve(pixel_curve),
            pro=_pro_from(pixel_curve, regions, 0.3),
            iap=iap,
            iap90=iap90,
        )
    result.update(fpr=fpr, fnr=fnr)
    return result


# --------------------------------------------------------------------------------------------------
# uncertainty
# --------------------------------------------------------------------------------------------------


def paired_bootstrap(
    measure: Callable[[IntArray], npt.ArrayLike], labels: npt.ArrayLike, rounds: int, seed: int = 0
) -> npt.NDArray[np.float64]:
    """``measure`` of ``rounds`` bootstrap resamples of a test set: (rounds, M).

    ``measure`` takes the indices of one resample (with repeats) and returns M numbers. Images are
    drawn with replacement within each label, so every resample keeps the test set's counts of good
    and defective images and AUROC stays defined. For a comparison, ``measure`` returns one model's
    metrics minus the other's on the same indices: the resamples then keep what the two share (both
    find the same images hard), which two separate intervals would count as noise, and the spread of
    the differences says how far a difference measured on this test set can be trusted.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    label_array = _as_binary(labels, "labels")
    if label_array.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {label_array.shape}")
    groups = [np.flatnonzero(label_array == value) for value in (False, True)]
    groups = [group for group in groups if group.size]
    if not groups:
        raise ValueError("labels are empty")
    rng = np.random.default_rng(seed)
    results = []
    for _ in range(rounds):
        indices = np.concatenate([rng.choice(group, size=group.size, replace=True) for group in groups])
        results.append(np.atleast_1d(np.asarray(measure(indices), dtype=np.float64)))
    return np.stack(results)
