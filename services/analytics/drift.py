"""Drift monitors: is a line, camera or recipe moving away from how it ran before?

Per (line, camera, recipe), the first ``reference_frames`` inspections are the reference; after
that, every ``check_every`` frames the last ``window_frames`` are compared with it:

* **score**: the population stability index (PSI) of the anomaly scores over the reference's
  deciles (0.1 is a shift worth a look, 0.25 a large one);
* **NG rate**: the window's NG rate over the reference's (and a one-sided binomial test);
* **each process parameter**: the window's median minus the reference median, in robust standard
  deviations (1.4826 × the reference's median absolute deviation);
* **process data**: the share of the last ``process_window`` frames whose process snapshot is
  missing or stale (checked from the first frame: no reference needed).

A statistic must stay beyond its limit for ``persist_frames`` frames before it raises an alert:
the synthetic line's own upsets (a chiller hiccup, a pressure surge) last up to about 200 s and
should not page anyone, a drift stays. An alert is raised once per episode (it re-arms when the
statistic falls back within its limit) and at most once per ``cooldown_s`` per monitor.

State lives in memory: a restarted monitor learns its reference again.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, JsonValue

from schemas.alert import Alert, AlertSeverity
from schemas.ids import new_uuid7
from schemas.inspection import Inspection


class DriftSettings(BaseModel):
    """How the drift monitors decide (see the module's docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    reference_frames: int = Field(default=2000, ge=50, description="Frames per camera that set the reference")
    window_frames: int = Field(default=600, ge=20, description="Recent frames compared with it")
    check_every: int = Field(default=50, ge=1, description="Frames between checks")
    persist_frames: int = Field(
        default=1000, ge=0, description="How long a statistic stays out before an alert"
    )
    psi_limit: float = Field(default=0.3, gt=0, description="Anomaly-score PSI above this is drift")
    ng_ratio_limit: float = Field(default=1.75, gt=1, description="NG rate this many times the reference's")
    param_z_limit: float = Field(default=4.0, gt=0, description="Median shift in robust standard deviations")
    process_window: int = Field(default=200, ge=10, description="Frames over which process data gaps count")
    process_gap_share: float = Field(
        default=0.1, gt=0, le=1, description="Share of frames without fresh data"
    )
    cooldown_s: float = Field(
        default=3600.0, ge=0, description="Least time between two alerts of one monitor"
    )


StreamKey = tuple[str, str, str]  # (line, camera, recipe)


@dataclass
class _Episode:
    """One monitor of one stream: how long its statistic has been out, whether it has alerted."""

    out_since: int | None = None  # frame count when the statistic went out of bounds
    active: bool = False
    last_raised: datetime | None = None


@dataclass
class _Reference:
    score_edges: np.ndarray
    score_shares: np.ndarray
    ng_rate: float
    params: dict[str, tuple[float, float]]  # name → (median, robust sd)


@dataclass
class _Stream:
    frames: int = 0
    reference: _Reference | None = None
    ref_scores: list[float] = field(default_factory=list)
    ref_ng: list[bool] = field(default_factory=list)
    ref_params: dict[str, list[float]] = field(default_factory=dict)
    scores: deque[float] = field(default_factory=deque)
    ng: deque[bool] = field(default_factory=deque)
    params: dict[str, deque[float]] = field(default_factory=dict)
    process_ok: deque[bool] = field(default_factory=deque)
    episodes: dict[str, _Episode] = field(default_factory=dict)


class DriftMonitor:
    """Feed it every stored inspection (in capture order per camera); it returns the alerts to raise."""

    def __init__(self, settings: DriftSettings | None = None) -> None:
        self.settings = settings or DriftSettings()
        self._streams: dict[StreamKey, _Stream] = {}

    def observe_many(self, inspections: list[Inspection]) -> list[Alert]:
        return [alert for inspection in inspections for alert in self.observe(inspection)]

    def observe(self, inspection: Inspection) -> list[Alert]:
        s = self.settings
        if not s.enabled:
            return []
        key = (inspection.line_id, inspection.camera_id, inspection.recipe)
        stream = self._streams.setdefault(key, _Stream())
        stream.frames += 1
        params = inspection.process.params
        stream.process_ok.append(inspection.process.status == "ok")
        if len(stream.process_ok) > s.process_window:
            stream.process_ok.popleft()
        if stream.reference is None:
            stream.ref_scores.append(inspection.score)
            stream.ref_ng.append(inspection.verdict == "NG")
            for name, value in params.items():
                stream.ref_params.setdefault(name, []).append(value)
            if len(stream.ref_scores) >= s.reference_frames:
                stream.reference = _reference(stream, s.reference_frames)
                stream.ref_scores, stream.ref_ng, stream.ref_params = [], [], {}
        else:
            stream.scores.append(inspection.score)
            stream.ng.append(inspection.verdict == "NG")
            for name in stream.reference.params:
                if name in params:
                    window = stream.params.setdefault(name, deque())
                    window.append(params[name])
                    if len(window) > s.window_frames:
                        window.popleft()
            if len(stream.scores) > s.window_frames:
                stream.scores.popleft()
                stream.ng.popleft()
        if stream.frames % s.check_every:
            return []
        return self._check(key, stream, inspection.captured_at)

    def _check(self, key: StreamKey, stream: _Stream, now: datetime) -> list[Alert]:
        s = self.settings
        line, camera, recipe = key
        alerts: list[Alert] = []
        if len(stream.process_ok) >= s.process_window:
            gaps = 1.0 - sum(stream.process_ok) / len(stream.process_ok)
            message = (
                f"{gaps:.0%} of the last {s.process_window} frames on {camera} have no fresh process data "
                f"(limit {s.process_gap_share:.0%})"
            )
            details = {"share_without_fresh_data": round(gaps, 4), "window_frames": s.process_window}
            alerts += self._judge(
                key, stream, now, "process_data", gaps > s.process_gap_share, 0, message, details
            )
        reference = stream.reference
        if reference is None or len(stream.scores) < s.window_frames:
            return alerts

        psi = population_stability(reference, np.fromiter(stream.scores, dtype=float))
        message = (
            f"anomaly scores on {camera} ({recipe}) moved away from the reference: PSI {psi:.2f} "
            f"(limit {s.psi_limit:g}) over the last {s.window_frames} frames"
        )
        details = {"psi": round(psi, 4), "limit": s.psi_limit, "window_frames": s.window_frames}
        alerts += self._judge(
            key, stream, now, "score_drift", psi > s.psi_limit, s.persist_frames, message, details
        )

        ng = sum(stream.ng)
        rate = ng / len(stream.ng)
        ratio = rate / max(reference.ng_rate, 0.5 / s.reference_frames)
        p_value = binomial_upper_p(ng, len(stream.ng), max(reference.ng_rate, 1e-6))
        message = (
            f"NG rate on {camera} ({recipe}) is {rate:.1%} over the last {s.window_frames} frames, "
            f"{ratio:.1f}x the reference's {reference.ng_rate:.1%}"
        )
        details = {
            "ng_rate": round(rate, 4),
            "reference_ng_rate": round(reference.ng_rate, 4),
            "ratio": round(ratio, 3),
            "p_value": p_value,
            "window_frames": s.window_frames,
        }
        out = ratio > s.ng_ratio_limit and p_value < 1e-3
        severity: AlertSeverity = "critical" if ratio > 2 * s.ng_ratio_limit else "warning"
        alerts += self._judge(key, stream, now, "ng_rate", out, s.persist_frames, message, details, severity)

        for name, (median, sd) in reference.params.items():
            window = stream.params.get(name)
            if not window or len(window) < s.window_frames // 2:
                continue
            now_median = float(np.median(np.fromiter(window, dtype=float)))
            z = (now_median - median) / sd
            message = (
                f"{name} on {line} has moved: median {now_median:g} against {median:g} in the reference "
                f"({z:+.1f} robust sd)"
            )
            param_details: dict[str, JsonValue] = {
                "param": name,
                "median": now_median,
                "reference_median": median,
                "robust_z": round(z, 3),
            }
            out = abs(z) > s.param_z_limit
            alerts += self._judge(
                key, stream, now, f"param_drift:{name}", out, s.persist_frames, message, param_details
            )
        return alerts

    def _judge(
        self,
        key: StreamKey,
        stream: _Stream,
        now: datetime,
        monitor: str,
        out: bool,
        persist: int,
        message: str,
        details: Mapping[str, JsonValue],
        severity: AlertSeverity = "warning",
    ) -> list[Alert]:
        episode = stream.episodes.setdefault(monitor, _Episode())
        if not out:
            episode.out_since, episode.active = None, False
            return []
        if episode.out_since is None:
            episode.out_since = stream.frames
        if episode.active or stream.frames - episode.out_since < persist:
            return []
        cooldown = timedelta(seconds=self.settings.cooldown_s)
        if episode.last_raised is not None and now - episode.last_raised < cooldown:
            return []
        episode.active, episode.last_raised = True, now
        kind = monitor.split(":")[0]
        return [
            Alert(
                alert_id=new_uuid7(),
                line_id=key[0],
                camera_id=key[1],
                kind=kind,
                severity=severity,
                message=message,
                raised_at=now,
                details={"recipe": key[2], "monitor": monitor, "frames_seen": stream.frames, **details},
            )
        ]


def _reference(stream: _Stream, frames: int) -> _Reference:
    scores = np.asarray(stream.ref_scores, dtype=float)
    edges = np.unique(np.quantile(scores, np.linspace(0, 1, 11)[1:-1]))
    params = {}
    for name, values in stream.ref_params.items():
        if len(values) < 0.9 * frames:
            continue  # recorded too rarely to judge
        array = np.asarray(values, dtype=float)
        median = float(np.median(array))
        sd = 1.4826 * float(np.median(np.abs(array - median)))
        if sd > 0:
            params[name] = (median, sd)
    return _Reference(edges, _shares(edges, scores), float(np.mean(stream.ref_ng)), params)


def _shares(edges: np.ndarray, values: np.ndarray) -> np.ndarray:
    counts = np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1)
    return np.clip(counts / max(len(values), 1), 1e-4, None)


def population_stability(reference: _Reference, scores: np.ndarray) -> float:
    """PSI = Σ (now − ref) · ln(now / ref) over the reference's score deciles."""
    now = _shares(reference.score_edges, scores)
    return float(((now - reference.score_shares) * np.log(now / reference.score_shares)).sum())


def binomial_upper_p(k: int, n: int, p: float) -> float:
    """P(X ≥ k) for X ~ Binomial(n, p), by the normal approximation with continuity correction."""
    if n == 0:
        return 1.0
    sd = math.sqrt(n * p * (1 - p))
    if sd == 0:
        return 0.0 if k > n * p else 1.0
    z = (k - 0.5 - n * p) / sd
    return 0.5 * math.erfc(z / math.sqrt(2.0))
