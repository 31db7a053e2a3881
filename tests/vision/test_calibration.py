"""Thresholds at a target false-positive rate from good scores alone, on synthetic score distributions."""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pytest

from services.vision.calibration import (
    MIN_SCALE,
    fit_threshold,
    min_images_for_order_statistic,
    order_statistic_rank,
    tolerance_factor,
)


def lognormal_fpr(threshold: float, mu: float, sigma: float) -> float:
    return 1.0 - NormalDist(mu, sigma).cdf(math.log(threshold))


def test_few_held_out_images_still_keep_the_fpr_with_the_stated_confidence() -> None:
    rng = np.random.default_rng(0)
    mu, sigma = 0.5, 0.2
    true_fprs = [
        lognormal_fpr(fit_threshold(rng.lognormal(mu, sigma, 31), 0.01, 0.9).threshold, mu, sigma)
        for _ in range(400)
    ]
    share_within = np.mean(np.asarray(true_fprs) <= 0.01)
    assert 0.85 <= share_within <= 0.97  # about the 90% confidence asked for: neither loose nor absurd
    assert np.median(true_fprs) > 0.0005  # not so conservative that it never raises an alarm


def test_many_held_out_images_use_the_distribution_free_order_statistic() -> None:
    rng = np.random.default_rng(1)
    scores = rng.gamma(3.0, 1.0, 3000)  # not log-normal: the order statistic must not care
    calibration = fit_threshold(scores, 0.01, 0.9)
    assert calibration.method == "order-statistic"
    fpr = float(np.mean(rng.gamma(3.0, 1.0, 200_000) >= calibration.threshold))
    assert 0.005 <= fpr <= 0.0115


def test_order_statistic_needs_enough_images() -> None:
    assert min_images_for_order_statistic(0.01, 0.9) == 230
    assert order_statistic_rank(229, 0.01, 0.9) is None
    assert order_statistic_rank(230, 0.01, 0.9) == 230  # the maximum, and only just
    assert order_statistic_rank(1000, 0.01, 0.9) == 995  # P(Binomial(1000, 0.99) <= 994) >= 0.9


def test_tolerance_factor_shrinks_towards_the_normal_quantile() -> None:
    z = NormalDist().inv_cdf(0.99)
    assert (
        tolerance_factor(10, 0.01, 0.9) > tolerance_factor(30, 0.01, 0.9) > tolerance_factor(1000, 0.01, 0.9)
    )
    assert abs(tolerance_factor(100_000, 0.01, 0.9) - z) < 0.02
    assert abs(tolerance_factor(20, 0.01, 0.9) - 3.052) < 0.05  # one-sided tolerance tables: 3.052


def test_normalised_scores_put_the_threshold_at_one_half_and_keep_order() -> None:
    calibration = fit_threshold(np.random.default_rng(2).lognormal(0, 0.3, 40))
    assert calibration.normalise(calibration.threshold) == pytest.approx(0.5)
    raw = np.array([0.1, 0.9, calibration.threshold, 3.0, 50.0])
    normalised = calibration.normalise(raw)
    assert np.all(np.diff(normalised[[0, 1, 3, 4]]) > 0)
    assert np.all((normalised > 0) & (normalised < 1))


def test_calibration_refuses_too_few_scores() -> None:
    with pytest.raises(ValueError, match="at least 3"):
        fit_threshold(np.array([1.0, 2.0]))


def test_closely_agreeing_good_images_still_give_graded_normalised_scores() -> None:
    """Uniform parts: held-out scores within 1 % of each other. A defect 1.3x the threshold is clearly
    anomalous but not pinned at 1.0, so severities and heat maps keep their gradation."""
    calibration = fit_threshold(np.random.default_rng(3).normal(2.0, 0.02, 40))
    assert calibration.scale == MIN_SCALE
    high = calibration.normalise(np.array([1.3, 1.7, 3.0]) * calibration.threshold)
    np.testing.assert_allclose(high, [0.74, 0.89, 0.99], atol=0.01)
    wide = fit_threshold(np.random.default_rng(3).lognormal(0, 0.5, 40))
    assert wide.scale > MIN_SCALE  # a real spread is kept
