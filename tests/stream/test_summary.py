"""The run summary the commands print."""

from __future__ import annotations

from services.stream.summary import LineSummary


def test_summary_lines_give_frames_ng_rate_dead_letters_throughput_and_latency() -> None:
    summary = LineSummary(frames_in=12, inspected=10, ng=3, frame_dead_letters=2, wall_s=4.0)
    summary.dead_letters = {"undecodable": 1, "unknown_camera": 1, "malformed_row": 2}
    summary.latencies_ms.extend(float(ms) for ms in range(1, 101))
    assert summary.lines() == [
        "frames        12 in, 10 inspected, 2 dead-lettered",
        "NG rate       30.0% (3 NG of 10)",
        "dead letters  4 (malformed_row 2, undecodable 1, unknown_camera 1)",
        "throughput    3.0 frames/s over 4.0 s",
        "latency       p50 50 ms, p99 99 ms (read off the source to stored)",
    ]


def test_the_throughput_line_says_how_long_detector_processes_took_to_start() -> None:
    summary = LineSummary(inspected=10, wall_s=2.0, startup_s=3.14)
    assert summary.lines()[3] == "throughput    5.0 frames/s over 2.0 s (after 3.1 s starting the detectors)"


def test_an_empty_run_reads_as_zeros_and_says_why_it_stopped() -> None:
    summary = LineSummary(stopped_by="blob store full: No space left on device")
    lines = summary.lines()
    assert lines[1] == "NG rate       0.0% (0 NG of 0)"
    assert lines[2] == "dead letters  0 (none)"
    assert lines[-1] == "stopped       blob store full: No space left on device"


def test_latency_percentiles_cover_a_bounded_window() -> None:
    summary = LineSummary()
    assert summary.latencies_ms.maxlen is not None
    summary.latencies_ms.extend([1000.0] * summary.latencies_ms.maxlen)
    summary.latencies_ms.extend([1.0] * summary.latencies_ms.maxlen)
    assert summary.latency_ms(99) == 1.0
