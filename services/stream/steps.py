"""The steps of inspecting a frame, as plain functions over schema records.

No step knows where its input came from: the embedded runtime, a Faust worker or an API request
call the same functions. A step that cannot use its input returns a :class:`DeadLetter` instead of
raising, so that a worker never dies on bad input.
"""

from __future__ import annotations

import io
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Final, get_args

import numpy as np
import torch
from PIL import Image

from schemas.blob import BlobEncoding, BlobRef
from schemas.dead_letter import DeadLetter
from schemas.defect import BoundingBox, Defect, Point
from schemas.frame import Frame
from schemas.inspection import Inspection
from schemas.process import ProcessSnapshot
from services.storage.ports import BlobStore
from services.stream.rejects import reject
from services.vision.defects import DefectRegion
from services.vision.images import DEFAULT_MAX_MEGAPIXELS, ImageError, decode_image
from services.vision.inspector import Inspector, Prediction
from services.vision.overlay import encode_heatmap, encode_png

MISSING_PROCESS = ProcessSnapshot(status="missing")


def elapsed_ms(start: float) -> float:
    """Milliseconds since ``start`` (a ``time.perf_counter()`` reading)."""
    return (time.perf_counter() - start) * 1000.0


def encode_frame(image: np.ndarray) -> bytes:
    """A decoded RGB frame as PNG bytes (lossless), for the blob store."""
    return encode_png(image)


PNG_SIGNATURE: Final = b"\x89PNG\r\n\x1a\n"


def png_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from a PNG's IHDR chunk (always the first), or None when it is not one."""
    if len(data) < 24 or not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR":
        return None
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    return (width, height) if width > 0 and height > 0 else None


def probe_image(data: bytes) -> tuple[BlobEncoding, int, int] | str:
    """The encoding, width and height from an image's header (nothing decoded), or why not.

    PNG, the line's usual frame, is read directly (16 bytes); the rest through Pillow (about 0.1 ms,
    the same again for a PNG whose header it would refuse)."""
    size = png_size(data)
    if size is not None:
        return "png", *size
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as image:
                fmt, (width, height) = (image.format or "").lower(), image.size
    except Exception as err:  # Pillow raises many types for bad headers
        return f"cannot read the image header ({type(err).__name__}: {err})"
    if fmt not in get_args(BlobEncoding):
        known = ", ".join(get_args(BlobEncoding))
        return f"unsupported image format {fmt or 'unknown'!r}; expected one of {known}"
    if width < 1 or height < 1:
        return f"image is {width}x{height}"
    return fmt, width, height  # type: ignore[return-value]  # fmt is checked against BlobEncoding above


def decode(
    frame: Frame, data: bytes, max_megapixels: float = DEFAULT_MAX_MEGAPIXELS
) -> np.ndarray | DeadLetter:
    """The frame's image as RGB uint8, or a dead letter saying why it cannot be used."""
    try:
        return decode_image(data, frame.image.uri, max_megapixels)
    except ImageError as err:
        code = "oversized" if "MP limit" in err.reason else "undecodable"
        return reject("decode", code, err.reason, frame.image.uri, frame.frame_id)


def preprocess(inspector: Inspector, images: Sequence[np.ndarray]) -> torch.Tensor:
    """Resize and normalise decoded frames into the detector's (B, 3, S, S) input batch."""
    return inspector.preprocess(images)


def detect(
    inspector: Inspector, batch: torch.Tensor, frames_hw: Sequence[tuple[int, int]]
) -> list[Prediction]:
    """Score a preprocessed batch: verdicts, normalised anomaly maps and defect regions."""
    return inspector.interpret(inspector.score_batch(batch), frames_hw)


def to_defect(region: DefectRegion) -> Defect:
    x, y, width, height = region.bbox
    cx, cy = region.centroid
    return Defect(
        bbox=BoundingBox(x=max(0, x), y=max(0, y), width=width, height=height),
        area_px=region.area_px,
        area_share=min(1.0, region.area_share),
        max_score=region.max_score,
        mean_score=min(region.mean_score, region.max_score),
        centroid=Point(x=cx, y=cy),
        location=region.location,  # type: ignore[arg-type]  # find_defects only returns grid names
        severity=region.severity,  # type: ignore[arg-type]
    )


def postprocess(prediction: Prediction) -> list[Defect]:
    """The prediction's defect regions as :class:`Defect` records, most severe first."""
    return [to_defect(region) for region in prediction.defects]


def store_heatmap(
    blobs: BlobStore,
    prediction: Prediction,
    frame_size: tuple[int, int],
    roi: tuple[int, int, int, int] | None,
) -> BlobRef:
    """Store the heat map (the normalised anomaly map as a small grayscale PNG aligned with the
    frame of ``frame_size`` (height, width); see services/vision/overlay.py); raises BlobStoreFull."""
    data, width, height = encode_heatmap(prediction.anomaly_map, frame_size, roi)
    return blobs.put(data, "png", width, height)


def build_inspection(
    frame: Frame,
    inspector: Inspector,
    prediction: Prediction,
    defects: list[Defect],
    heatmap: BlobRef | None,
    process: ProcessSnapshot,
    timings_ms: Mapping[str, float],
) -> Inspection:
    """The record stored for one inspected frame."""
    return Inspection(
        frame_id=frame.frame_id,
        line_id=frame.line_id,
        station_id=frame.station_id,
        camera_id=frame.camera_id,
        part_id=frame.part_id,
        recipe=frame.recipe,
        captured_at=frame.captured_at,
        model_name=inspector.card.name,
        model_version=inspector.card.version,
        score_raw=prediction.score_raw,
        score=float(np.clip(prediction.score, 0.0, 1.0)),
        verdict="NG" if prediction.verdict == "NG" else "OK",
        defects=defects,
        image=frame.image,
        heatmap=heatmap,
        embedding=[float(v) for v in prediction.embedding],
        process=process,
        timings_ms={name: round(ms, 3) for name, ms in timings_ms.items()},
        inspected_at=datetime.now(UTC),
    )


@dataclass(frozen=True)
class EncodedHeatmap:
    """A frame's heat map PNG (see :func:`services.vision.overlay.encode_heatmap`), not yet stored."""

    data: bytes
    width: int
    height: int
    encode_ms: float


@dataclass(frozen=True)
class Detected:
    """A batch scored by the detector, not yet made into records."""

    predictions: list[Prediction]
    timings_ms: dict[str, float]  # the batch steps (preprocess, infer), each for the whole batch
    # Each frame's heat map, when encoded where the batch was scored (a detector process): the
    # predictions' anomaly maps are then dropped, and the records store these instead.
    heatmaps: list[EncodedHeatmap] | None = None


def detect_batch(inspector: Inspector, images: Sequence[np.ndarray]) -> Detected:
    """Preprocess decoded frames and score them as one batch (the detector's part of inspecting)."""
    start = time.perf_counter()
    batch = preprocess(inspector, images)
    preprocess_ms = elapsed_ms(start)
    start = time.perf_counter()
    predictions = detect(inspector, batch, [(image.shape[0], image.shape[1]) for image in images])
    return Detected(predictions, {"preprocess": preprocess_ms, "infer": elapsed_ms(start)})


def with_heatmaps(inspector: Inspector, images: Sequence[np.ndarray], detected: Detected) -> Detected:
    """``detected`` with each frame's heat map encoded and the frame-sized anomaly maps dropped:
    what a detector process sends back (a few KB a frame instead of a float per pixel)."""
    heatmaps, slim = [], []
    for image, prediction in zip(images, detected.predictions, strict=True):
        start = time.perf_counter()
        data, width, height = encode_heatmap(prediction.anomaly_map, image.shape[:2], inspector.card.roi)
        heatmaps.append(EncodedHeatmap(data, width, height, elapsed_ms(start)))
        slim.append(replace(prediction, anomaly_map=np.zeros((0, 0), np.float32)))
    return Detected(slim, detected.timings_ms, heatmaps)


def finish_batch(
    inspector: Inspector,
    frames: Sequence[Frame],
    images: Sequence[np.ndarray],
    detected: Detected,
    blobs: BlobStore,
    process: Sequence[ProcessSnapshot] | None = None,
    *,
    timings_ms: Sequence[Mapping[str, float]] | None = None,
) -> list[Inspection]:
    """The records of a detected batch: outline defects, store heat maps, build each record.

    Raises ``BlobStoreFull`` when a heat map cannot be stored: no record is built then.
    """
    records = []
    for i, (frame, image, prediction) in enumerate(zip(frames, images, detected.predictions, strict=True)):
        start = time.perf_counter()
        defects = postprocess(prediction)
        postprocess_ms = elapsed_ms(start)
        start = time.perf_counter()
        if detected.heatmaps is not None:  # encoded where the batch was scored: store it
            encoded = detected.heatmaps[i]
            heatmap = blobs.put(encoded.data, "png", encoded.width, encoded.height)
            heatmap_ms = encoded.encode_ms + elapsed_ms(start)
        else:
            heatmap = store_heatmap(blobs, prediction, image.shape[:2], inspector.card.roi)
            heatmap_ms = elapsed_ms(start)
        timings = dict(timings_ms[i]) if timings_ms is not None else {}
        timings |= detected.timings_ms | {"postprocess": postprocess_ms, "heatmap": heatmap_ms}
        snapshot = process[i] if process is not None else MISSING_PROCESS
        records.append(build_inspection(frame, inspector, prediction, defects, heatmap, snapshot, timings))
    return records


def inspect_batch(
    inspector: Inspector,
    frames: list[Frame],
    images: list[np.ndarray],
    blobs: BlobStore,
    process: list[ProcessSnapshot] | None = None,
    *,
    timings_ms: Sequence[Mapping[str, float]] | None = None,
) -> list[Inspection]:
    """Inspect decoded frames as one batch: detect, outline defects, store heat maps, build records.

    :func:`detect_batch` then :func:`finish_batch`; the embedded runtime calls the two on their own,
    so that one batch's heat maps are stored while the next batch is being detected.
    ``process`` holds the snapshot joined to each frame (``missing`` for all when None);
    ``timings_ms`` the times of earlier steps per frame (e.g. decode), merged into each record.
    Batch steps (preprocess, infer) record the time of the whole batch they ran in.
    Raises ``BlobStoreFull`` when a heat map cannot be stored: no record is built then.
    """
    if len(frames) != len(images):
        raise ValueError(f"{len(frames)} frames but {len(images)} images")
    if process is not None and len(process) != len(frames):
        raise ValueError(f"{len(frames)} frames but {len(process)} process snapshots")
    if not frames:
        return []
    detected = detect_batch(inspector, images)
    return finish_batch(inspector, frames, images, detected, blobs, process, timings_ms=timings_ms)
