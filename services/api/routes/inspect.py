"""``POST /v1/inspect``: an AOI machine sends a frame and gets the verdict back in the same call."""

import io
import time
from datetime import UTC, datetime
from typing import Annotated, get_args

import numpy as np
from fastapi import APIRouter, File, Form, HTTPException, Request, UploadFile, status
from PIL import Image

from schemas.blob import BlobEncoding
from schemas.common import Name, UtcDatetime
from schemas.frame import Frame
from schemas.ids import new_frame_id
from services.api.context import ApiContext, Context
from services.api.models import InspectedDefect, InspectResult
from services.storage.errors import BlobStoreFull
from services.stream.rejects import reject
from services.stream.steps import inspect_batch
from services.vision.images import ImageError, decode_image
from services.vision.overlay import encode_png

router = APIRouter(tags=["inspect"])

_ENCODINGS = set(get_args(BlobEncoding))


def frame_bytes(data: bytes, image: np.ndarray) -> tuple[bytes, str]:
    """The bytes to keep for a frame and their encoding: as uploaded, or as PNG for other formats."""
    with Image.open(io.BytesIO(data)) as opened:
        encoding = (opened.format or "").lower()
    if encoding in _ENCODINGS:
        return data, encoding
    return encode_png(image), "png"


def _decode_or_reject(
    context: ApiContext, data: bytes, source: str, frame_id: str, camera: tuple[str, str]
) -> np.ndarray:
    """The decoded frame; an image that cannot be used becomes a dead letter and a 422."""
    try:
        return decode_image(data, source)
    except ImageError as err:
        ref = f"upload {source!r} ({len(data)} bytes) from {camera[0]}/{camera[1]}"
        context.records.add_dead_letter(reject("decode", "undecodable", err.reason, ref, frame_id))
        context.metrics.rejected_frames.labels(*camera).inc()
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT, f"cannot use the image: {err.reason}"
        ) from err


@router.post(
    "/v1/inspect",
    responses={
        422: {"description": "The image cannot be decoded (kept as a dead letter) or a field is invalid"},
        503: {"description": "No model is loaded"},
        507: {"description": "The blob store is full"},
    },
)
def inspect_frame(
    request: Request,
    context: Context,
    image: Annotated[UploadFile, File(description="The frame: PNG, JPEG, BMP, TIFF or WebP")],
    line_id: Annotated[Name, Form()],
    station_id: Annotated[Name, Form()],
    camera_id: Annotated[Name, Form()],
    recipe: Annotated[Name, Form()],
    part_id: Annotated[Name | None, Form()] = None,
    captured_at: Annotated[
        UtcDatetime | None, Form(description="When the frame was taken, ISO 8601 with timezone; default now")
    ] = None,
) -> InspectResult:
    """Inspect one frame: store it, score it, store the record and answer with the verdict."""
    inspector = context.inspector
    if inspector is None:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, "no model loaded: start the API with --model DIR"
        )
    frame_id = new_frame_id()
    data = image.file.read()
    start = time.perf_counter()
    pixels = _decode_or_reject(context, data, image.filename or "frame", frame_id, (line_id, camera_id))
    decode_ms = (time.perf_counter() - start) * 1000.0
    try:
        kept, encoding = frame_bytes(data, pixels)
        ref = context.blobs.put(kept, encoding, width=pixels.shape[1], height=pixels.shape[0])
        frame = Frame(
            frame_id=frame_id,
            line_id=line_id,
            station_id=station_id,
            camera_id=camera_id,
            part_id=part_id,
            recipe=recipe,
            captured_at=captured_at or datetime.now(UTC),
            image=ref,
        )
        with context.inference_lock:
            (inspection,) = inspect_batch(
                inspector, [frame], [pixels], context.blobs, timings_ms=[{"decode": decode_ms}]
            )
        context.blobs.sync()  # the frame and heat map durable before the record points at them
    except BlobStoreFull as err:
        raise HTTPException(status.HTTP_507_INSUFFICIENT_STORAGE, str(err)) from err
    context.records.upsert_inspection(inspection)
    context.metrics.inspections.labels(line_id, camera_id, inspection.verdict).inc()
    return InspectResult(
        frame_id=inspection.frame_id,
        timestamp=inspection.captured_at,
        part_id=inspection.part_id,
        overall_grade=inspection.verdict,
        score=inspection.score,
        defects=[InspectedDefect.from_defect(d) for d in inspection.defects],
        heatmap_url=str(request.url_for("inspection_overlay", frame_id=inspection.frame_id))
        if inspection.heatmap
        else None,
    )
