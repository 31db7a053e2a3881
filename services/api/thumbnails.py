"""Overlays drawn from stored records, and smaller copies for the dashboard's feed."""

import logging

import cv2
import numpy as np

from schemas.inspection import Inspection
from services.storage.ports import BlobStore
from services.vision.images import ImageError, decode_image
from services.vision.overlay import Mark, render_overlay

log = logging.getLogger(__name__)


def frame_pixels(blobs: BlobStore, inspection: Inspection) -> np.ndarray | None:
    """The inspection's frame as RGB, or None when it is not stored (any more) or cannot be read."""
    if inspection.image is None:
        return None
    try:
        data = blobs.get(inspection.image.uri)
    except FileNotFoundError:
        return None  # retention deleted it
    try:
        return decode_image(data)
    except ImageError as err:
        log.warning("frame of inspection %s cannot be drawn: %s", inspection.frame_id, err)
        return None


def overlay_of(inspection: Inspection, heatmap: np.ndarray, frame: np.ndarray | None) -> np.ndarray:
    """The overlay of a stored inspection: its heat map over its frame (or grey), defects boxed."""
    size = (inspection.image.height, inspection.image.width) if inspection.image else heatmap.shape[:2]
    if frame is not None:
        size = frame.shape[:2]
    score_map = cv2.resize(heatmap, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    marks = [
        Mark((d.bbox.x, d.bbox.y, d.bbox.width, d.bbox.height), d.severity, d.max_score)
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
