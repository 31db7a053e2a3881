"""Synthetic defects painted onto good images, for choosing settings without real defect samples.

A plant trains on good parts only, so a setting that trades two scores against each other (the
per-position share of the anomaly map) cannot be chosen on real defects. Three kinds of defect are
painted onto held-out good images instead, each with its exact mask:

- ``patch``: an irregular region (smoothed noise, thresholded) filled with a piece of another good
  image, moved, turned and blended in (foreign material, a misplaced texture; DRAEM / CutPaste);
- ``stroke``: a thin dark or bright polyline (a scratch or a crack);
- ``blotch``: a soft-edged ellipse made darker or brighter (a stain, a dent's shading).

The images are the model's input size (the masks are at that size too).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import cv2
import numpy as np
import numpy.typing as npt

KINDS: Final = ("patch", "stroke", "blotch")
MIN_MASK_SHARE: Final = 0.002  # a painted defect covers at least this share of the image


@dataclass(frozen=True)
class PaintedDefect:
    image: npt.NDArray[np.uint8]  # (S, S, 3) RGB
    mask: npt.NDArray[np.bool_]  # (S, S)
    kind: str


def _region(rng: np.random.Generator, size: int) -> npt.NDArray[np.bool_]:
    """An irregular blob: smoothed noise above a threshold, inside an ellipse of 6-25% of the side."""
    noise = cv2.GaussianBlur(
        rng.random((size, size), dtype=np.float32), (0, 0), rng.uniform(2, 6) * size / 256
    )
    cy, cx = rng.uniform(0.2, 0.8, 2) * size
    ry, rx = rng.uniform(0.03, 0.125, 2) * size
    yy, xx = np.mgrid[0:size, 0:size]
    inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
    if not inside.any():
        inside[int(cy), int(cx)] = True
    return inside & (noise >= np.quantile(noise[inside], rng.uniform(0.2, 0.5)))


def _patch(
    rng: np.random.Generator, image: npt.NDArray[np.uint8], donor: npt.NDArray[np.uint8]
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]]:
    size = image.shape[0]
    mask = _region(rng, size)
    piece = np.rot90(donor, int(rng.integers(1, 4)))
    piece = np.roll(piece, tuple(int(v) for v in rng.integers(0, size, 2)), axis=(0, 1)).astype(np.float32)
    piece = np.clip(piece * rng.uniform(0.6, 1.4) + rng.uniform(-40, 40), 0, 255)
    beta = rng.uniform(0.5, 1.0)
    out = image.astype(np.float32)
    out[mask] = (1 - beta) * out[mask] + beta * piece[mask]
    return out, mask


def _stroke(
    rng: np.random.Generator, image: npt.NDArray[np.uint8], donor: npt.NDArray[np.uint8]
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]]:
    size = image.shape[0]
    points = [rng.uniform(0.15, 0.85, 2) * size]
    for _ in range(int(rng.integers(2, 5))):
        step = rng.normal(0, 0.08, 2) * size
        points.append(np.clip(points[-1] + step, 0, size - 1))
    line = np.zeros((size, size), np.uint8)
    thickness = max(1, round(rng.uniform(1.5, 4.0) * size / 256))
    cv2.polylines(line, [np.array(points, np.int32).reshape(-1, 1, 2)], False, 1, thickness, cv2.LINE_AA)
    mask = line.astype(bool)
    shift = rng.uniform(60, 140) * rng.choice([-1.0, 1.0])
    out = image.astype(np.float32)
    out[mask] += shift
    return out, mask


def _blotch(
    rng: np.random.Generator, image: npt.NDArray[np.uint8], donor: npt.NDArray[np.uint8]
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]]:
    size = image.shape[0]
    cy, cx = rng.uniform(0.2, 0.8, 2) * size
    ry, rx = rng.uniform(0.03, 0.1, 2) * size
    yy, xx = np.mgrid[0:size, 0:size]
    distance = np.sqrt(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2)
    weight = np.clip(1.5 - distance, 0, 1).astype(np.float32)  # flat inside, soft edge outside
    gain = rng.choice([rng.uniform(0.35, 0.7), rng.uniform(1.4, 1.9)])
    out = image.astype(np.float32)
    out *= (1 + (gain - 1) * weight)[..., None]
    return out, weight >= 0.5


_PAINTERS: Final = {"patch": _patch, "stroke": _stroke, "blotch": _blotch}


def paint_defect(
    image: npt.NDArray[np.uint8],
    donor: npt.NDArray[np.uint8],
    rng: np.random.Generator,
    kind: str | None = None,
) -> PaintedDefect:
    """``image`` (S, S, 3) with one synthetic defect of ``kind`` (random when None) and its mask;
    ``donor`` is another good image of the same size (the patch kind takes its texture)."""
    if image.ndim != 3 or image.shape[0] != image.shape[1] or image.shape != donor.shape:
        raise ValueError(f"expected two square RGB images of one size, got {image.shape} and {donor.shape}")
    kind = kind or str(rng.choice(KINDS))
    if kind not in _PAINTERS:
        raise ValueError(f"unknown defect kind {kind!r}; expected one of {KINDS}")
    for _ in range(20):  # a region drawn at the very edge can come out too small: draw again
        painted, mask = _PAINTERS[kind](rng, image, donor)
        if mask.mean() >= MIN_MASK_SHARE:
            break
    return PaintedDefect(np.clip(painted, 0, 255).astype(np.uint8), mask, kind)
