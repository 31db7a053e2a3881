"""Heat maps and overlays.

A stored heat map is the normalised anomaly map alone (an 8-bit grayscale PNG, 0..255 for scores
0..1, aligned with the whole frame, at most ``HEATMAP_MAX_SIDE`` pixels on its longer side): small,
cheap to write, and free of the frame's pixels, so plants that must not keep images can keep it.
An overlay for people (the frame, the map in colour over it, defects boxed and labelled) is drawn
from the frame and the heat map when someone looks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np

SEVERITY_BGR = {"minor": (0, 215, 255), "major": (0, 140, 255), "critical": (0, 0, 255)}
HEATMAP_MAX_SIDE = 128
"""The longer side of a stored heat map; the map is smooth (features are 8+ pixels apart), so this
keeps what the detector saw at the model's 256-pixel input."""
QUIET_SCORE = 0.25
"""Normalised scores at or below this do not tint the frame in an overlay."""
NO_FRAME_GREY = 96
"""The background of an overlay whose frame is no longer stored (retention)."""


class Marked(Protocol):
    """What an overlay needs of a defect: its box, severity and peak score."""

    @property
    def bbox(self) -> tuple[int, int, int, int]: ...  # x, y, width, height in frame pixels
    @property
    def severity(self) -> str: ...
    @property
    def max_score(self) -> float: ...


@dataclass(frozen=True)
class Mark:
    """A defect's box as a stored record gives it."""

    bbox: tuple[int, int, int, int]
    severity: str
    max_score: float


def heatmap_size(frame_width: int, frame_height: int) -> tuple[int, int]:
    """(width, height) of the stored heat map of a frame that size: never larger than the frame."""
    scale = min(1.0, HEATMAP_MAX_SIDE / max(frame_width, frame_height))
    return max(1, round(frame_width * scale)), max(1, round(frame_height * scale))


def heatmap_levels(
    score_map: np.ndarray,
    frame_size: tuple[int, int],
    roi: tuple[int, int, int, int] | None = None,
) -> np.ndarray:
    """The stored heat map's pixels: 8-bit levels (0..255 for scores 0..1), aligned with the frame.

    ``score_map`` covers the ROI (x, y, width, height) of a frame of ``frame_size`` (height, width),
    or the whole frame; outside the ROI the heat map is 0. What a detector hands back for each frame
    (a few KB, whatever the frame's size); :func:`encode_levels` makes it the stored PNG.
    """
    frame_height, frame_width = frame_size
    width, height = heatmap_size(frame_width, frame_height)
    x, y, w, h = roi if roi is not None else (0, 0, frame_width, frame_height)
    sx, sy = width / frame_width, height / frame_height
    left, top = round(x * sx), round(y * sy)
    right, bottom = max(left + 1, round((x + w) * sx)), max(top + 1, round((y + h) * sy))
    levels = np.zeros((height, width), np.uint8)
    clipped = np.clip(score_map, 0, 1).astype(np.float32)
    scaled = cv2.resize(clipped, (right - left, bottom - top), interpolation=cv2.INTER_AREA)
    levels[top:bottom, left:right] = (scaled * 255 + 0.5).astype(np.uint8)
    return levels


def encode_levels(levels: np.ndarray) -> tuple[bytes, int, int]:
    """A heat map's levels (see :func:`heatmap_levels`) as a grayscale PNG, with its width and height."""
    ok, data = cv2.imencode(".png", levels)
    if not ok:
        raise ValueError("PNG encoding failed")
    return bytes(data.tobytes()), int(levels.shape[1]), int(levels.shape[0])


def encode_heatmap(
    score_map: np.ndarray,
    frame_size: tuple[int, int],
    roi: tuple[int, int, int, int] | None = None,
) -> tuple[bytes, int, int]:
    """The heat map PNG of a normalised anomaly map, with its width and height (see
    :func:`heatmap_levels` for the arguments)."""
    return encode_levels(heatmap_levels(score_map, frame_size, roi))


def decode_heatmap(data: bytes) -> np.ndarray:
    """A stored heat map as float32 normalised scores in 0..1; raises ValueError if it is not one."""
    levels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if levels is None or levels.ndim != 2 or levels.dtype != np.uint8:
        raise ValueError("stored heat map is not an 8-bit grayscale PNG")
    return levels.astype(np.float32) / 255


def render_overlay(
    image_rgb: np.ndarray | None,
    score_map: np.ndarray,
    defects: Sequence[Marked],
    roi: tuple[int, int, int, int] | None = None,
    alpha: float = 0.45,
    frame_size: tuple[int, int] | None = None,
) -> np.ndarray:
    """An RGB uint8 image: ``score_map`` (normalised, 0..1) blended over the frame, defects boxed.

    Without the frame (``image_rgb`` None) the map is drawn over grey at ``frame_size`` (height,
    width), so the boxes still sit where the defects were.
    """
    if image_rgb is None:
        if frame_size is None:
            raise ValueError("render_overlay needs the frame or its size")
        image_rgb = np.full((*frame_size, 3), NO_FRAME_GREY, np.uint8)
    out = cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR)
    x, y, w, h = roi if roi is not None else (0, 0, out.shape[1], out.shape[0])
    heat = cv2.resize(np.clip(score_map, 0, 1), (w, h), interpolation=cv2.INTER_LINEAR)
    colour = cv2.applyColorMap((heat * 255).astype(np.uint8), cv2.COLORMAP_JET)
    region = out[y : y + h, x : x + w]
    weight = (alpha * np.clip((heat - QUIET_SCORE) / 0.5, 0, 1))[..., None]  # only warm areas tint the frame
    out[y : y + h, x : x + w] = (region * (1 - weight) + colour * weight).astype(np.uint8)
    thickness = max(1, round(max(out.shape[:2]) / 300))
    for defect in defects:
        bx, by, bw, bh = defect.bbox
        colour_bgr = SEVERITY_BGR.get(defect.severity, (255, 255, 255))
        cv2.rectangle(out, (bx, by), (bx + bw - 1, by + bh - 1), colour_bgr, thickness)
        label = f"{defect.severity} {defect.max_score:.2f}"
        cv2.putText(
            out,
            label,
            (bx, max(12, by - 4)),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.4 * thickness,
            colour_bgr,
            thickness,
            cv2.LINE_AA,
        )
    return cv2.cvtColor(out, cv2.COLOR_BGR2RGB)


def encode_png(image_rgb: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError("PNG encoding failed")
    return bytes(data.tobytes())
