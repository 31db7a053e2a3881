"""The running line's Prometheus metrics, in their own registry (exposed as Prometheus text)."""

from __future__ import annotations

import asyncio
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class LineMetrics:
    """Frames in, out (by verdict) and dead-lettered (by step and reason), step latency, queue depth."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.frames_in = Counter(
            "linewatch_line_frames_in", "Frames read from the sources", ["camera_id"], registry=self.registry
        )
        self.frames_out = Counter(
            "linewatch_line_frames_out",
            "Frames inspected and stored",
            ["camera_id", "verdict"],
            registry=self.registry,
        )
        self.dead_letters = Counter(
            "linewatch_line_dead_letters",
            "Frames and process samples given up on, by step and reason",
            ["step", "reason"],
            registry=self.registry,
        )
        self.process_samples = Counter(
            "linewatch_line_process_samples",
            "Process samples joined into the history",
            registry=self.registry,
        )
        self.step_seconds = Histogram(
            "linewatch_line_step_seconds",
            "Time a step took (a whole batch for batch steps)",
            ["step"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.latency = Histogram(
            "linewatch_line_latency_seconds",
            "From a frame read off its source to its record stored",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "linewatch_line_batch_frames",
            "Frames per detector batch",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "linewatch_line_queue_depth",
            "Items waiting in the queue before a step",
            ["queue"],
            registry=self.registry,
        )

    def watch_queue(self, name: str, queue: asyncio.Queue[Any]) -> None:
        """Report ``queue``'s length as ``linewatch_line_queue_depth{queue=name}`` when scraped."""
        self.queue_depth.labels(name).set_function(queue.qsize)

    def observe_steps(self, timings_ms: dict[str, float]) -> None:
        for step, ms in timings_ms.items():
            self.step_seconds.labels(step).observe(ms / 1000.0)

    def text(self) -> bytes:
        """All metrics in the Prometheus text format."""
        return generate_latest(self.registry)
