"""Operating points: what a threshold costs in false alarms and misses, and the REVIEW band.

A model's card keeps the scores its thresholds were set on: good images scored out of sample
(cross-fitted, or held out) and copies of them with synthetic defects painted on (or real labelled
defects, once ``linewatch calibrate --defects`` has given some). From them every threshold has an
estimated false-alarm rate (good parts at or above it) and miss rate (defective parts below it),
and ``linewatch calibrate`` can re-set the thresholds without retraining.

Three verdicts: a frame scoring at or above the NG threshold is **NG**; at or above the review
threshold (lower) it is **REVIEW**: the model is unsure and a person decides; below it, **OK**. A
miss is a defective part called OK; a false alarm a good part called NG. Parts sent to REVIEW are
neither, and their expected share is printed. The review threshold is set like the NG threshold
(:func:`services.vision.calibration.fit_threshold`) at a larger false-alarm rate, ``review_fpr``:
at most that share of good parts reach REVIEW or NG.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from services.vision.calibration import Calibration, fit_threshold

DEFAULT_REVIEW_FPR = 0.10
Verdict = Literal["OK", "REVIEW", "NG"]


class ReviewBand(BaseModel):
    """The lower edge of the REVIEW band, a raw image score, and how it was set."""

    model_config = ConfigDict(extra="forbid")

    threshold: float
    review_fpr: float | None = None  # the share of good parts that may reach REVIEW or NG
    method: str = "tolerance"  # "tolerance" (fit_threshold at review_fpr), "miss-rate" or "off"


class OperatingCurve(BaseModel):
    """The scores the thresholds were set on, and what they say about any threshold."""

    model_config = ConfigDict(extra="forbid")

    goods: Literal["cross-fitted", "held-out", "confirmed"]
    defects: str  # "painted" (synthetic, on the goods) or "real: <folder>" (calibrate --defects)
    good_scores: list[float] = Field(repr=False)
    defect_scores: list[float] = Field(repr=False)

    def false_alarm_rate(self, threshold: float) -> float:
        """Share of the good scores at or above ``threshold``."""
        return float(np.mean(np.asarray(self.good_scores) >= threshold)) if self.good_scores else float("nan")

    def miss_rate(self, threshold: float) -> float:
        """Share of the defect scores below ``threshold``."""
        return (
            float(np.mean(np.asarray(self.defect_scores) < threshold)) if self.defect_scores else float("nan")
        )

    def threshold_for_miss_rate(self, max_miss_rate: float) -> float:
        """The highest threshold whose estimated miss rate is at most ``max_miss_rate``."""
        if not 0.0 <= max_miss_rate < 1.0:
            raise ValueError(f"the miss rate must lie in [0, 1), got {max_miss_rate}")
        if not self.defect_scores:
            raise ValueError("the operating curve has no defect scores to set a miss rate on")
        ordered = np.sort(np.asarray(self.defect_scores))
        allowed = int(np.floor(max_miss_rate * len(ordered) + 1e-9))  # defects that may fall below
        return float(ordered[min(allowed, len(ordered) - 1)])

    def curve(self, points: int = 50) -> list[dict[str, float]]:
        """Thresholds from the lowest to the highest score, each with its estimated rates."""
        every = np.concatenate([self.good_scores, self.defect_scores])
        if not every.size:
            return []
        grid = np.unique(np.quantile(every, np.linspace(0.0, 1.0, points)))
        return [
            {
                "threshold": float(t),
                "false_alarm_rate": self.false_alarm_rate(t),
                "miss_rate": self.miss_rate(t),
            }
            for t in grid
        ]


class CameraCalibration(BaseModel):
    """One camera's own thresholds (``linewatch calibrate --camera``): set on that camera's recent
    good frames, they replace the model's NG threshold and REVIEW band for its frames. The pixel
    calibration (heat maps, defects) stays the model's."""

    model_config = ConfigDict(extra="forbid")

    image_calibration: Calibration
    review: ReviewBand | None = None
    n_goods: int  # frames the thresholds were set on
    left_out: int = 0  # unreviewed NG or REVIEW frames of the period (their truth unknown)
    since: str | None = None  # the period's start (ISO 8601)
    calibrated_at: str

    def grade(self, raw_score: float) -> tuple[float, Verdict]:
        """The normalised score and the verdict of a raw image score on this camera."""
        score = float(self.image_calibration.normalise(raw_score))
        return score, verdict_of(raw_score, self.image_calibration.threshold, self.review)


def review_band(
    good_scores: np.ndarray, ng_threshold: float, review_fpr: float | None, confidence: float
) -> ReviewBand:
    """The REVIEW band's lower edge at ``review_fpr`` on the good scores (never above the NG
    threshold); ``None`` or 0 turns the band off (the edge is the NG threshold)."""
    if not review_fpr:
        return ReviewBand(threshold=ng_threshold, review_fpr=None, method="off")
    edge = fit_threshold(good_scores, review_fpr, confidence).threshold
    return ReviewBand(threshold=min(edge, ng_threshold), review_fpr=review_fpr, method="tolerance")


def verdict_of(raw_score: float, ng_threshold: float, band: ReviewBand | None) -> Verdict:
    if raw_score >= ng_threshold:
        return "NG"
    if band is not None and band.method != "off" and raw_score >= band.threshold:
        return "REVIEW"
    return "OK"


def estimates(curve: OperatingCurve, ng_threshold: float, band: ReviewBand | None) -> dict[str, float]:
    """Estimated shares at the card's operating point: good parts called NG (false alarms) and sent
    to REVIEW, defective parts called OK (misses) and sent to REVIEW."""
    review = band.threshold if band is not None else ng_threshold
    goods, defects = np.asarray(curve.good_scores), np.asarray(curve.defect_scores)
    share = lambda mask: float(mask.mean()) if mask.size else float("nan")  # noqa: E731
    return {
        "false_alarm_rate": share(goods >= ng_threshold),
        "good_review_share": share((goods >= review) & (goods < ng_threshold)),
        "miss_rate": share(defects < review),
        "defect_review_share": share((defects >= review) & (defects < ng_threshold)),
        "n_goods": float(goods.size),
        "n_defects": float(defects.size),
    }


def describe(curve: OperatingCurve | None, ng_threshold: float, band: ReviewBand | None) -> str:
    """One paragraph for ``train`` and ``calibrate`` to print."""
    if curve is None:
        return (
            "no operating curve on this card (trained before there was one): retrain to estimate miss rates"
        )
    e = estimates(curve, ng_threshold, band)
    return (
        f"estimated at this operating point, from {int(e['n_goods'])} {curve.goods} good scores and"
        f" {int(e['n_defects'])} {curve.defects} defects: false alarms (good called NG)"
        f" {e['false_alarm_rate']:.1%}, misses (defective called OK) {e['miss_rate']:.1%}; REVIEW takes"
        f" {e['good_review_share']:.1%} of good parts and {e['defect_review_share']:.1%} of defective ones"
    )
