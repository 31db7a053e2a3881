"""Overlays drawn from stored records, and smaller copies for the dashboard's feed."""

import logging

import cv2
import numpy as np

from schemas.inspection import Inspection
from services.storage.ports import BlobStore
from services.vision.images import ImageError, decode_image
from services.vision.overlay import Mark, render_overlay

log = logging.getLogger(__name__)


def frame_pixels(blobs: BlobStore, inspection: Inspection, max_side: int | None = None) -> np.ndarray | None:
    """The inspection's frame as RGB, or None when it is not stored (any more) or cannot be read.
    With ``max_side``, scaled down to it (a JPEG decoded at a reduced size to begin with)."""
    if inspection.image is None:
        return None
    try:
        data = blobs.get(inspection.image.uri)
    except FileNotFoundError:
        return None  # retention deleted it
    try:
        pixels = decode_image(data, max_side=max_side)
    except ImageError as err:
        log.warning("frame of inspection %s cannot be drawn: %s", inspection.frame_id, err)
        return None
    return shrink(pixels, max_side) if max_side is not None else pixels


def overlay_of(
    inspection: Inspection, heatmap: np.ndarray, frame: np.ndarray | None, max_side: int | None = None
) -> np.ndarray:
    """The overlay of a stored inspection: its heat map over its frame (or grey), defects boxed.

    Drawn at the size of ``frame`` (which may be a scaled-down copy, see :func:`frame_pixels`), or
    without a frame at the record's size scaled to ``max_side``: a preview of a 64 MP frame is
    drawn at preview size, never at full size and then shrunk. The boxes are scaled to match."""
    full = (inspection.image.height, inspection.image.width) if inspection.image else heatmap.shape[:2]
    if frame is not None:
        size = frame.shape[:2]
    elif max_side is not None and max(full) > max_side:
        scale = max_side / max(full)
        size = (max(1, round(full[0] * scale)), max(1, round(full[1] * scale)))
    else:
        size = full
    sy, sx = size[0] / full[0], size[1] / full[1]
    score_map = cv2.resize(heatmap, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    marks = [
        Mark(
            (
                round(d.bbox.x * sx),
                round(d.bbox.y * sy),
                max(1, round(d.bbox.width * sx)),
                max(1, round(d.bbox.height * sy)),
            ),
            d.severity,
            d.max_score,
        )
        for d in inspection.defects
    ]
    return render_overlay(frame, score_map, marks, frame_size=size)


def shrink(image: np.ndarray, max_side: int) -> np.ndarray:
    """``image`` scaled down so that its longer side is at most ``max_side``; never scaled up."""
    height, width = image.shape[:2]
    scale = max_side / max(height, width)
    if scale >= 1:
        return image
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)
