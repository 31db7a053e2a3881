"""Heat-map overlays for people: the frame, its anomaly map in colour, defects boxed and labelled."""

from __future__ import annotations

import cv2
import numpy as np

from services.vision.defects import DefectRegion

SEVERITY_BGR = {"minor": (0, 215, 255), "major": (0, 140, 255), "critical": (0, 0, 255)}


def render_overlay(
    image_rgb: np.ndarray,
    score_map: np.ndarray,
    defects: list[DefectRegion],
    roi: tuple[int, int, int, int] | None = None,
    alpha: float = 0.45,
) -> np.ndarray:
    """An RGB uint8 image: ``score_map`` (normalised, 0..1) blended over the frame, defects boxed."""
    out = cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR)
    x, y, w, h = roi if roi is not None else (0, 0, out.shape[1], out.shape[0])
    heat = cv2.resize(np.clip(score_map, 0, 1), (w, h), interpolation=cv2.INTER_LINEAR)
    colour = cv2.applyColorMap((heat * 255).astype(np.uint8), cv2.COLORMAP_JET)
    region = out[y : y + h, x : x + w]
    weight = (alpha * np.clip((heat - 0.25) / 0.5, 0, 1))[..., None]  # only warm areas tint the frame
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
