"""Auto-labels: what linewatch writes about an inspected frame before a person has looked at it.

The mask of an auto-label is the frame's stored heat map above the NG level (0.5 of the normalised
score, level 128 of the 8-bit PNG), cleaned by morphology: an opening drops specks of one or two
heat-map pixels, a closing fills pin holes inside a region. It is stored as an 8-bit PNG (255 =
defect) at the heat map's size, aligned with the frame like the heat map itself.
"""

from __future__ import annotations

from datetime import datetime

import cv2
import numpy as np

from schemas.blob import BlobRef
from schemas.inspection import SCORE_THRESHOLD, Inspection
from schemas.label import Label
from services.storage.ports import BlobStore

MASK_LEVEL = round(SCORE_THRESHOLD * 255)  # heat-map levels at or above this are defect pixels


def mask_of_heatmap(levels: np.ndarray, open_px: int = 1, close_px: int = 1) -> np.ndarray:
    """The defect mask (bool, same size) of a heat map's 8-bit levels: the levels at or above the NG
    level, opened then closed with square kernels of ``2 * px + 1`` pixels (0 leaves a step out)."""
    if levels.ndim != 2 or levels.dtype != np.uint8:
        raise ValueError(f"a heat map is 8-bit grayscale, got {levels.dtype} of shape {levels.shape}")
    mask: np.ndarray = (levels >= MASK_LEVEL).astype(np.uint8)
    for px, operation in ((open_px, cv2.MORPH_OPEN), (close_px, cv2.MORPH_CLOSE)):
        if px > 0:
            kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (2 * px + 1, 2 * px + 1))
            mask = cv2.morphologyEx(mask, operation, kernel)
    return mask.astype(bool)


def decode_png(data: bytes) -> np.ndarray:
    """An 8-bit grayscale PNG's pixels; ValueError when the bytes are not one."""
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if pixels is None or pixels.ndim != 2 or pixels.dtype != np.uint8:
        raise ValueError("not an 8-bit grayscale PNG")
    return pixels


def mask_of_png(data: bytes) -> np.ndarray:
    """A mask a person drew (any PNG: grayscale, RGB or RGBA, white = defect) as a bool array;
    ValueError when the bytes are not an image."""
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    if pixels is None:
        raise ValueError("not a PNG image")
    return np.asarray(pixels >= 128)


def store_mask(blobs: BlobStore, mask: np.ndarray) -> BlobRef:
    """A defect mask (bool) as an 8-bit PNG in the blob store (durable when this returns)."""
    ok, encoded = cv2.imencode(".png", mask.astype(np.uint8) * 255)
    if not ok:
        raise ValueError("the mask could not be encoded as PNG")
    ref = blobs.put(encoded.tobytes(), "png", mask.shape[1], mask.shape[0])
    blobs.sync()
    return ref


def auto_mask(inspection: Inspection, blobs: BlobStore) -> BlobRef | None:
    """The auto-label mask of an inspection, stored; None when it has no heat map, the heat map is
    gone from the blob store, or nothing in it reaches the NG level."""
    if inspection.heatmap is None:
        return None
    try:
        levels = decode_png(blobs.get(inspection.heatmap.uri))
    except (FileNotFoundError, ValueError):
        return None
    mask = mask_of_heatmap(levels)
    return store_mask(blobs, mask) if mask.any() else None


def label_of(
    inspection: Inspection,
    mask: BlobRef | None,
    now: datetime,
    priority: float = 0.0,
    reasons: tuple[str, ...] = (),
) -> Label:
    """The auto-label of ``inspection``; queued for review (at ``now``) when ``reasons`` say why."""
    queued = bool(reasons)
    return Label(
        frame_id=inspection.frame_id,
        line_id=inspection.line_id,
        station_id=inspection.station_id,
        camera_id=inspection.camera_id,
        recipe=inspection.recipe,
        captured_at=inspection.captured_at,
        model_name=inspection.model_name,
        model_version=inspection.model_version,
        verdict=inspection.verdict,
        score=inspection.score,
        score_raw=inspection.score_raw,
        defects=[defect.model_copy(update={"embedding": []}) for defect in inspection.defects],
        mask=mask,
        image=inspection.image,
        heatmap=inspection.heatmap,
        status="queued" if queued else "auto",
        priority=round(priority, 6) if queued else 0.0,
        reasons=list(reasons),
        queued_at=now if queued else None,
        labelled_at=now,
    )
