"""The guard that keeps torch.fx tracing and forward passes in other threads apart."""

from __future__ import annotations

import threading
import time

from services.vision.tracing import SharedExclusive


def test_a_trace_waits_for_running_passes_and_new_passes_wait_for_the_trace() -> None:
    guard = SharedExclusive()
    events: list[str] = []
    reading, release_reader = threading.Event(), threading.Event()

    def reader(name: str, hold: threading.Event | None = None) -> None:
        with guard.shared():
            events.append(f"{name} in")
            if hold is not None:
                reading.set()
                hold.wait(5)
            events.append(f"{name} out")

    def writer() -> None:
        with guard.exclusive():
            events.append("trace in")
            time.sleep(0.05)
            events.append("trace out")

    first = threading.Thread(target=reader, args=("pass 1", release_reader))
    first.start()
    assert reading.wait(5)
    trace = threading.Thread(target=writer)
    trace.start()
    time.sleep(0.05)
    late = threading.Thread(target=reader, args=("pass 2",))
    late.start()
    time.sleep(0.05)
    assert events == ["pass 1 in"]  # the trace waits for pass 1; pass 2 waits behind the trace
    release_reader.set()
    for thread in (first, trace, late):
        thread.join(5)
    assert events == ["pass 1 in", "pass 1 out", "trace in", "trace out", "pass 2 in", "pass 2 out"]


def test_passes_share_the_guard() -> None:
    guard = SharedExclusive()
    inside = threading.Barrier(3, timeout=5)

    def reader() -> None:
        with guard.shared():
            inside.wait()  # all three inside at once, or the barrier breaks

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert not inside.broken
