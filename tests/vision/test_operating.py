"""Operating curves, the REVIEW band and the three verdicts."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from services.vision.operating import OperatingCurve, ReviewBand, estimates, review_band, verdict_of


def curve() -> OperatingCurve:
    return OperatingCurve(
        goods="cross-fitted",
        defects="painted",
        good_scores=[float(v) for v in range(1, 101)],  # 1..100
        defect_scores=[float(v) for v in range(51, 151)],  # 51..150
    )


def test_rates_at_a_threshold_count_goods_at_or_above_and_defects_below() -> None:
    c = curve()
    assert c.false_alarm_rate(91) == pytest.approx(0.10)
    assert c.miss_rate(91) == pytest.approx(0.40)
    assert c.false_alarm_rate(1000) == 0 and c.miss_rate(0) == 0
    points = c.curve(20)
    assert [p["threshold"] for p in points] == sorted(p["threshold"] for p in points)
    assert all(a["miss_rate"] <= b["miss_rate"] for a, b in itertools.pairwise(points))


def test_threshold_for_a_miss_rate_is_the_highest_that_keeps_it() -> None:
    c = curve()
    for rate in (0.0, 0.1, 0.25, 0.5):
        t = c.threshold_for_miss_rate(rate)
        assert c.miss_rate(t) <= rate + 1e-9
        assert c.miss_rate(np.nextafter(t, math.inf)) > rate  # any higher misses more
    with pytest.raises(ValueError, match="no defect scores"):
        OperatingCurve(
            goods="held-out", defects="painted", good_scores=[1.0], defect_scores=[]
        ).threshold_for_miss_rate(0.1)


def test_review_band_sits_below_the_ng_threshold_and_can_be_off() -> None:
    goods = np.random.default_rng(0).lognormal(0.0, 0.3, 500)
    band = review_band(goods, ng_threshold=3.0, review_fpr=0.05, confidence=0.9)
    assert band.method == "tolerance" and band.threshold < 3.0
    assert (goods >= band.threshold).mean() <= 0.05
    assert review_band(goods, 1.1, 0.05, 0.9).threshold == 1.1  # never above the NG threshold
    off = review_band(goods, 3.0, None, 0.9)
    assert off.method == "off" and off.threshold == 3.0


def test_three_verdicts_and_their_estimated_shares() -> None:
    band = ReviewBand(threshold=61.0, review_fpr=0.4)
    assert [verdict_of(s, 91.0, band) for s in (10, 61, 90.9, 91, 200)] == [
        "OK",
        "REVIEW",
        "REVIEW",
        "NG",
        "NG",
    ]
    assert verdict_of(70, 91.0, None) == "OK"
    e = estimates(curve(), 91.0, band)
    assert e["false_alarm_rate"] == pytest.approx(0.10)
    assert e["good_review_share"] == pytest.approx(0.30)  # 61..90
    assert e["miss_rate"] == pytest.approx(0.10)  # 51..60
    assert e["defect_review_share"] == pytest.approx(0.30)
