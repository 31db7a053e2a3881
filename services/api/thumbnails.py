"""Smaller copies of stored PNGs for the dashboard's feed."""

import cv2
import numpy as np


def shrink_png(data: bytes, max_side: int) -> bytes:
    """``data`` (a PNG) scaled down so that its longer side is at most ``max_side``; never scaled up."""
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError("stored heat map is not a decodable image")
    height, width = image.shape[:2]
    scale = max_side / max(height, width)
    if scale >= 1:
        return data
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    ok, encoded = cv2.imencode(".png", cv2.resize(image, size, interpolation=cv2.INTER_AREA))
    if not ok:
        raise ValueError("PNG encoding failed")
    return bytes(encoded.tobytes())
