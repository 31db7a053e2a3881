"""Thresholds from good images alone, at a target false-positive rate, and score normalisation.

A plant rarely has defect samples when a model is trained, so the threshold is set on good images
held out from fitting. With enough held-out images (``n >= ln(1-confidence) / ln(1-fpr)``) the
threshold is a distribution-free order statistic whose false-positive rate is at most the target
with the stated confidence. With fewer, a log-normal model is fitted to the held-out scores and the
threshold is its one-sided normal tolerance limit (coverage ``1-fpr`` at ``confidence``), which grows
as fewer images are held out. The larger of that and the empirical quantile is used.

Scores are also reported normalised: a logistic of the log-score distance to the threshold in units
of the held-out spread (at least ``MIN_SCALE``), so that the threshold sits at 0.5 for every model and
runtime.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
from pydantic import BaseModel, ConfigDict

MIN_SCALE = 0.25
"""The least spread (of log scores) normalise() divides by. Held-out good images can agree closely
(a spread of 0.01 is common on a uniform part), and dividing by that makes every score 5 % past the
threshold 1.0: severities and heat maps would lose all gradation. With 0.25, a score 1.3x the
threshold normalises to 0.74, 1.7x to 0.9, 3x to 0.99. Thresholds are not affected."""


class Calibration(BaseModel):
    model_config = ConfigDict(extra="forbid")

    threshold: float
    scale: float  # spread of log scores used by normalise(); > 0
    method: str  # "order-statistic", "lognormal-tolerance" or "f1"
    target_fpr: float
    confidence: float
    n_scores: int
    mean: float
    std: float
    min: float
    max: float

    def normalise(self, raw: np.ndarray | float) -> np.ndarray:
        """Map raw scores to (0, 1) with the threshold at exactly 0.5; monotonic."""
        raw_array = np.asarray(raw, dtype=np.float64)
        z = (np.log(np.maximum(raw_array, 1e-12)) - math.log(max(self.threshold, 1e-12))) / self.scale
        return 1.0 / (1.0 + np.exp(-np.clip(z, -50.0, 50.0)))


def min_images_for_order_statistic(target_fpr: float, confidence: float) -> int:
    return math.ceil(math.log(1.0 - confidence) / math.log(1.0 - target_fpr))


def _binomial_cdf(k: int, n: int, p: float) -> float:
    """P(Binomial(n, p) <= k), summed in log space (stable for n in the thousands)."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    log_p, log_q = math.log(p), math.log1p(-p)
    total = 0.0
    for i in range(k + 1):
        log_term = (
            math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * log_p + (n - i) * log_q
        )
        total += math.exp(log_term)
    return min(total, 1.0)


def order_statistic_rank(n: int, target_fpr: float, confidence: float) -> int | None:
    """Smallest 1-based rank k with P(FPR(X_(k)) <= target) >= confidence, or None if n is too small."""
    for k in range(1, n + 1):
        # FPR(X_(k)) <= p  <=>  F(X_(k)) >= 1-p  <=>  Binomial(n, 1-p) <= k-1
        if _binomial_cdf(k - 1, n, 1.0 - target_fpr) >= confidence:
            return k
    return None


def tolerance_factor(n: int, target_fpr: float, confidence: float) -> float:
    """One-sided normal tolerance factor k (Natrella's approximation): P(mu + k s covers 1-fpr) = conf."""
    z_p = NormalDist().inv_cdf(1.0 - target_fpr)
    z_g = NormalDist().inv_cdf(confidence)
    a = 1.0 - z_g**2 / (2.0 * (n - 1))
    b = z_p**2 - z_g**2 / n
    if a <= 0:
        raise ValueError(f"{n} scores are too few for a {confidence:.0%} tolerance bound")
    return (z_p + math.sqrt(z_p**2 - a * b)) / a


def fit_threshold(scores: np.ndarray, target_fpr: float = 0.01, confidence: float = 0.9) -> Calibration:
    """Threshold on good-image scores such that at most ``target_fpr`` of good images exceed it."""
    values = np.sort(np.asarray(scores, dtype=np.float64).ravel())
    n = values.size
    if n < 3:
        raise ValueError(f"need at least 3 held-out good images to calibrate, got {n}")
    if not 0.0 < target_fpr < 1.0 or not 0.0 < confidence < 1.0:
        raise ValueError("target_fpr and confidence must lie strictly between 0 and 1")
    logs = np.log(np.maximum(values, 1e-12))
    log_std = float(logs.std(ddof=1)) or 1e-6
    empirical = float(np.quantile(values, 1.0 - target_fpr))
    rank = order_statistic_rank(n, target_fpr, confidence)
    if rank is not None:
        threshold, method = float(values[rank - 1]), "order-statistic"
    else:
        k = tolerance_factor(n, target_fpr, confidence)
        threshold, method = max(math.exp(float(logs.mean()) + k * log_std), empirical), "lognormal-tolerance"
    return Calibration(
        threshold=threshold,
        scale=max(log_std, MIN_SCALE),
        method=method,
        target_fpr=target_fpr,
        confidence=confidence,
        n_scores=n,
        mean=float(values.mean()),
        std=float(values.std()),
        min=float(values[0]),
        max=float(values[-1]),
    )


def f1_optimal(calibration: Calibration, scores: np.ndarray, labels: np.ndarray) -> Calibration:
    """The same calibration with its threshold moved to the F1-optimal point on labelled scores."""
    from services.vision.metrics import f1_max

    _, threshold = f1_max(np.asarray(scores, dtype=np.float64), np.asarray(labels))
    return calibration.model_copy(update={"threshold": float(threshold), "method": "f1"})
