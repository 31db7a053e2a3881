"""The embedded line's options (no torch here: the settings import them)."""

from __future__ import annotations

from dataclasses import dataclass

from services.steps.admit import DEFAULT_CLOCK_SKEW_S, DEFAULT_MAX_FRAME_BYTES, AdmissionRules
from services.vision.images import DEFAULT_MAX_MEGAPIXELS


@dataclass(frozen=True)
class LineOptions:
    max_batch: int = 4  # frames per detector batch at most (on a CPU, larger batches only add latency)
    max_wait_ms: float = 50.0  # how long a batch waits to fill after its first frame
    queue_size: int = 4  # frames waiting before each step at most
    max_process_age_s: float = 5.0  # older process samples are joined as "stale"
    clock_skew_s: float = DEFAULT_CLOCK_SKEW_S  # timestamps further ahead of the clock are dead-lettered
    keep_frames: bool = True  # False: delete the raw frame blob once its record is stored
    cameras: frozenset[str] | None = None  # when given, frames from other cameras are dead-lettered
    lines: frozenset[str] | None = None  # when given, frames from other lines are dead-lettered
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    max_megapixels: float = DEFAULT_MAX_MEGAPIXELS
    skip_stored: bool = False  # resume: skip frames whose record is already stored

    def __post_init__(self) -> None:
        if self.max_batch < 1 or self.queue_size < 1:  # a queue of size 0 would be unbounded
            raise ValueError(
                f"max_batch and queue_size must be at least 1, got {self.max_batch}, {self.queue_size}"
            )
        if self.max_wait_ms < 0 or self.max_frame_bytes < 1:
            raise ValueError("max_wait_ms must be >= 0 and max_frame_bytes >= 1")

    def admission(self, recipes: frozenset[str]) -> AdmissionRules:
        """The admission rules these options give, for the recipes the inference port has models for."""
        return AdmissionRules(
            recipes=recipes,
            cameras=self.cameras,
            lines=self.lines,
            max_frame_bytes=self.max_frame_bytes,
            max_megapixels=self.max_megapixels,
            clock_skew_s=self.clock_skew_s,
        )
