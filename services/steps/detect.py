"""Detection: a batch of one recipe's decoded frames scored by its model.

:func:`detect_batch` is what every inference adapter runs where the model lives (a thread of the
line, a detector process, Triton's Python backend): preprocess, score, outline the defects in the
frame's own pixels and reduce each anomaly map to its heat map's levels. What comes back
(:class:`Detected`) is small and the same whichever adapter scored it: a few KB a frame, never a
float per pixel, so it crosses a pipe or the network cheaply.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from services.steps.admit import elapsed_ms
from services.vision.inspector import Inspector, Prediction
from services.vision.operating import CameraCalibration
from services.vision.overlay import heatmap_levels

NO_MAP = np.zeros((0, 0), np.float32)


@dataclass(frozen=True)
class Detected:
    """A batch scored by a detector, not yet made into records."""

    predictions: list[Prediction]  # without anomaly maps: the heat maps stand in for them
    heatmaps: list[np.ndarray]  # each frame's heat map levels (uint8, aligned with the frame)
    timings_ms: dict[str, float]  # the batch steps (preprocess, infer), each for the whole batch
    model_name: str
    model_version: str
    # cameras with thresholds of their own (the card's): the finish step grades their frames by them
    cameras: Mapping[str, CameraCalibration] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.predictions) != len(self.heatmaps):
            raise ValueError(f"{len(self.predictions)} predictions but {len(self.heatmaps)} heat maps")


def preprocess(inspector: Inspector, images: Sequence[np.ndarray]) -> torch.Tensor:
    """Resize and normalise decoded frames into the detector's (B, 3, S, S) input batch."""
    return inspector.preprocess(images)


def detect_batch(
    inspector: Inspector,
    images: Sequence[np.ndarray],
    sizes: Sequence[tuple[int, int]] | None = None,
) -> Detected:
    """Score decoded frames as one batch: verdicts, defects and heat maps.

    ``sizes`` are the frames' (height, width) that defects and heat maps are measured in (default:
    the decoded images' own; a very large JPEG is decoded at a reduced size but measured in its own
    pixels, see :func:`services.steps.admit.frame_size`)."""
    if sizes is None:
        sizes = [(int(image.shape[0]), int(image.shape[1])) for image in images]
    if len(sizes) != len(images):
        raise ValueError(f"{len(images)} images but {len(sizes)} sizes")
    start = time.perf_counter()
    batch = preprocess(inspector, images)
    return score_preprocessed(inspector, batch, sizes, elapsed_ms(start))


def score_preprocessed(
    inspector: Inspector, batch: torch.Tensor, sizes: Sequence[tuple[int, int]], preprocess_ms: float = 0.0
) -> Detected:
    """Score a preprocessed (B, 3, S, S) batch: verdicts, defects in the frames' own pixels
    (``sizes``) and heat maps. Triton's detector model calls it on what its preprocess model made."""
    if len(sizes) != batch.shape[0]:
        raise ValueError(f"{batch.shape[0]} images but {len(sizes)} sizes")
    start = time.perf_counter()
    predictions = inspector.interpret(inspector.score_batch(batch), sizes)
    roi = inspector.card.roi
    heatmaps = [heatmap_levels(p.anomaly_map, size, roi) for p, size in zip(predictions, sizes, strict=True)]
    slim = [replace(prediction, anomaly_map=NO_MAP) for prediction in predictions]
    card = inspector.card
    timings = {"preprocess": preprocess_ms, "infer": elapsed_ms(start)}
    return Detected(slim, heatmaps, timings, card.name, card.version, dict(card.cameras))
