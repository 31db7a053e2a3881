"""The as-of join: the sample in force at capture time, its age, and what is refused."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from schemas.blob import BlobRef
from schemas.dead_letter import reason_code
from schemas.frame import Frame
from schemas.process import ProcessSample
from services.ingest.frame_ids import replay_frame_id
from services.steps.join import TRIM_EVERY, ProcessHistory, check_capture_time

T0 = datetime(2025, 3, 4, 8, 0, 0, tzinfo=UTC)
NOW = T0 + timedelta(hours=1)


def sample(at_s: float, value: float = 1.0, line_id: str = "line-1") -> ProcessSample:
    return ProcessSample(
        line_id=line_id, machine_id="imm-1", ts=T0 + timedelta(seconds=at_s), params={"mould_temp_c": value}
    )


def history(*samples: ProcessSample, max_age_s: float = 5.0, max_samples: int = 100) -> ProcessHistory:
    h = ProcessHistory(max_age_s=max_age_s, skew_s=2.0, max_samples=max_samples)
    for s in samples:
        assert h.add(s, NOW) is None
    return h


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_exact_match_takes_the_sample_taken_at_capture_time() -> None:
    snap = history(sample(0, 1.0), sample(10, 2.0), sample(20, 3.0)).snapshot("line-1", at(10))
    assert snap.status == "ok"
    assert snap.params == {"mould_temp_c": 2.0}
    assert snap.sample_ts == at(10)
    assert snap.age_s == 0.0
    assert snap.machine_id == "imm-1"


def test_takes_the_latest_sample_before_capture_never_a_later_one() -> None:
    snap = history(sample(0, 1.0), sample(10, 2.0), sample(11, 3.0)).snapshot("line-1", at(10.9))
    assert snap.params == {"mould_temp_c": 2.0}
    assert snap.age_s == pytest.approx(0.9)


def test_samples_arriving_out_of_order_are_joined_by_time() -> None:
    snap = history(sample(10, 2.0), sample(0, 1.0), sample(5, 1.5)).snapshot("line-1", at(7))
    assert snap.params == {"mould_temp_c": 1.5}


def test_an_old_sample_is_stale_with_its_values_not_guessed() -> None:
    snap = history(sample(0, 1.0), max_age_s=5.0).snapshot("line-1", at(5.5))
    assert snap.status == "stale"
    assert snap.params == {"mould_temp_c": 1.0}
    assert snap.age_s == pytest.approx(5.5)


def test_a_sample_exactly_max_age_old_is_still_ok() -> None:
    assert history(sample(0), max_age_s=5.0).snapshot("line-1", at(5)).status == "ok"


def test_missing_before_the_first_sample_and_for_an_unknown_line() -> None:
    h = history(sample(10))
    assert h.snapshot("line-1", at(9.999)).status == "missing"
    assert h.snapshot("line-1", at(9.999)).params == {}
    assert h.snapshot("line-2", at(20)).status == "missing"


def test_lines_are_kept_apart() -> None:
    h = history(sample(0, 1.0, "line-1"), sample(1, 9.0, "line-2"))
    assert h.snapshot("line-1", at(2)).params == {"mould_temp_c": 1.0}
    assert h.snapshot("line-2", at(2)).params == {"mould_temp_c": 9.0}


def test_history_is_bounded_and_keeps_the_newest_samples() -> None:
    h = history(*(sample(i, float(i)) for i in range(50)), max_samples=10)
    assert h.snapshot("line-1", at(49)).params == {"mould_temp_c": 49.0}
    assert h.snapshot("line-1", at(5)).status == "missing"  # long trimmed away


def test_history_older_than_the_retention_window_is_dropped_but_the_join_at_its_start_holds() -> None:
    h = ProcessHistory(skew_s=2.0, retention_s=600)
    for i in range(2000):  # one sample a second for 2,000 s
        assert h.add(sample(i, float(i)), NOW) is None
    kept = h._lines["line-1"].times
    assert len(kept) <= 600 + TRIM_EVERY + 1  # memory stops growing with the window
    assert h.snapshot("line-1", at(1999)).params == {"mould_temp_c": 1999.0}
    assert h.snapshot("line-1", at(1999 - 600)).params == {"mould_temp_c": 1399.0}  # window start
    assert h.snapshot("line-1", at(100)).status == "missing"  # long gone
    with pytest.raises(ValueError, match="retention_s"):
        ProcessHistory(retention_s=0)


def test_a_sample_from_the_future_beyond_the_skew_is_a_dead_letter() -> None:
    h = ProcessHistory(skew_s=2.0)
    assert h.add(sample(0), T0 - timedelta(seconds=1.9)) is None  # within the skew
    letter = h.add(sample(10, 5.0), T0)
    assert letter is not None
    assert letter.source == "process"
    assert reason_code(letter) == "future_timestamp"
    assert h.snapshot("line-1", at(10)).params == {"mould_temp_c": 1.0}  # the refused sample is not used


def frame_at(captured_at: datetime) -> Frame:
    blob = BlobRef(uri="file:///b/x.png", sha256="0" * 64, size_bytes=1, width=1, height=1, encoding="png")
    return Frame(
        frame_id=replay_frame_id(captured_at, "x"),
        line_id="line-1",
        station_id="station-1",
        camera_id="cam-1",
        recipe="housing-A",
        captured_at=captured_at,
        image=blob,
    )


def test_a_frame_from_the_future_beyond_the_skew_is_a_dead_letter() -> None:
    assert check_capture_time(frame_at(T0 + timedelta(seconds=2)), T0, skew_s=2.0) is None
    letter = check_capture_time(frame_at(T0 + timedelta(seconds=3)), T0, skew_s=2.0)
    assert letter is not None
    assert reason_code(letter) == "future_timestamp"
    assert letter.original_ref == "file:///b/x.png"
