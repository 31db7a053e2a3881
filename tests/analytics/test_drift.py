"""Drift monitors on the synthetic line: a planted drift is caught, a stationary run is left alone."""

from __future__ import annotations

import json
from datetime import timedelta

from schemas.process import ProcessSnapshot
from services.analytics.drift import DriftMonitor, DriftSettings, binomial_upper_p
from services.ingest.synthetic_records import synthetic_inspections

REFERENCE = DriftSettings().reference_frames  # 2,000 frames (about 17 minutes at 2 parts/s)
DELAY_FRAMES = 2_200
"""The stated detection delay: within 2,200 frames (18 min) of the drift's start, every monitor that
should fire has fired (measured 1,600-2,100 on seeds 1-5; benchmarks/drift_alerts.py)."""


def test_a_stationary_run_of_5000_frames_raises_nothing() -> None:
    monitor = DriftMonitor()
    alerts = monitor.observe_many(list(synthetic_inspections(REFERENCE + 5_000, seed=1)))
    assert alerts == []


def test_a_cooling_mould_is_caught_by_every_monitor_it_moves() -> None:
    """The mould temperature falls by 10 °C over 10 minutes from frame 2,000: sink marks rise."""
    records = list(
        synthetic_inspections(6_000, seed=2, drift="mould_cooling", drift_start_s=1_000, drift_duration_s=600)
    )
    drift_start = REFERENCE  # frame index at 1,000 s (0.5 s per frame)
    alerts = DriftMonitor().observe_many(records)
    monitors = {a.details["monitor"]: a for a in alerts}
    assert {"param_drift:mould_temp_c", "ng_rate", "score_drift"} <= set(monitors)
    assert "param_drift:injection_speed_mm_s" not in monitors and "param_drift:cycle_time_s" not in monitors
    for alert in monitors.values():
        delay = int(alert.details["frames_seen"]) - drift_start  # type: ignore[arg-type]
        assert 0 < delay <= DELAY_FRAMES, (alert.details["monitor"], delay)
        assert alert.line_id == "line-1" and alert.camera_id == "cam-1"
        json.dumps(alert.model_dump(mode="json"))
    mould = monitors["param_drift:mould_temp_c"]
    assert mould.kind == "param_drift" and float(mould.details["robust_z"]) < -4  # type: ignore[arg-type]
    assert "mould_temp_c" in mould.message
    assert len([a for a in alerts if a.details["monitor"] == "ng_rate"]) == 1  # one alert per episode


def test_missing_process_data_is_flagged_once_per_episode() -> None:
    settings = DriftSettings(process_window=20, check_every=10, cooldown_s=0)
    monitor = DriftMonitor(settings)
    records = list(synthetic_inspections(200, seed=3))
    gap = range(60, 100)  # 40 frames without process data
    fed = [
        r.model_copy(update={"process": ProcessSnapshot(status="missing")}) if i in gap else r
        for i, r in enumerate(records)
    ]
    alerts = monitor.observe_many(fed[:150])
    (alert,) = alerts
    assert alert.kind == "process_data" and alert.details["share_without_fresh_data"] > 0.1  # type: ignore[operator]
    assert fed[60].captured_at <= alert.raised_at <= fed[80].captured_at
    again = [r.model_copy(update={"process": ProcessSnapshot(status="missing")}) for r in records[150:190]]
    assert [a.kind for a in monitor.observe_many(again)] == ["process_data"]  # a new episode, no cool-down


def test_the_cool_down_holds_back_a_second_alert() -> None:
    settings = DriftSettings(process_window=20, check_every=10, cooldown_s=3600)
    monitor = DriftMonitor(settings)
    records = list(synthetic_inspections(120, seed=4))
    missing = ProcessSnapshot(status="missing")
    fed = [r.model_copy(update={"process": missing}) if 20 <= i < 50 or 80 <= i < 110 else r
           for i, r in enumerate(records)]  # fmt: skip
    assert [a.kind for a in monitor.observe_many(fed)] == ["process_data"]  # the second is within the hour
    later = records[0].captured_at + timedelta(hours=2)
    late = [r.model_copy(update={"process": missing, "captured_at": later}) for r in records[:30]]
    assert [a.kind for a in monitor.observe_many(late)] == ["process_data"]


def test_disabled_monitors_raise_nothing() -> None:
    monitor = DriftMonitor(DriftSettings(enabled=False, process_window=10, check_every=1))
    missing = ProcessSnapshot(status="missing")
    assert (
        monitor.observe_many([r.model_copy(update={"process": missing}) for r in synthetic_inspections(50)])
        == []
    )


def test_binomial_tail() -> None:
    assert abs(binomial_upper_p(50, 100, 0.5) - 0.5398) < 0.001  # exact: 0.5398
    assert binomial_upper_p(80, 100, 0.5) < 1e-8
    assert binomial_upper_p(0, 0, 0.3) == 1.0
