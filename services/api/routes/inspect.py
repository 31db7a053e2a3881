"""``POST /v1/inspect``: an AOI machine sends a frame and gets the verdict back in the same call.

An upload goes through the same steps as a frame off the line (:mod:`services.steps`): admitted
under the same rules (known line, camera and recipe, size, capture time, claim check, decode),
joined to the running line's process history when the API serves beside a line, scored by the
inference port (the model of the frame's recipe; concurrent requests share the port's detectors),
finished and stored. A frame that cannot be used is a dead letter, kept with its bytes where they
could be stored, and the answer says why.
"""

import asyncio
import contextlib
import time
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, File, Form, HTTPException, Request, UploadFile, status

from schemas.common import Name, UtcDatetime
from schemas.dead_letter import DeadLetter, reason_code, reject
from schemas.ids import new_frame_id
from services.api.context import ApiContext, Context
from services.api.models import InspectedDefect, InspectResult
from services.ingest.ports import CapturedFrame
from services.steps.admit import admit, elapsed_ms, frame_size
from services.steps.finish import MISSING_PROCESS, finish_batch
from services.steps.join import join_process
from services.steps.store import keep_dead_letter, store_group
from services.storage.errors import BlobStoreFull

router = APIRouter(tags=["inspect"])

STATUS_BY_CODE = {
    "oversized": status.HTTP_413_CONTENT_TOO_LARGE,
    "blob_store_full": status.HTTP_507_INSUFFICIENT_STORAGE,
}
"""The answer to an upload refused for that reason code; any other refusal is 422."""


async def _refuse(context: ApiContext, letter: DeadLetter, camera: tuple[str, str], frame: bool) -> None:
    """Keep the dead letter, count it, and answer with its reason."""
    with contextlib.suppress(Exception):  # the store itself may be what failed; the client still learns why
        await asyncio.to_thread(keep_dead_letter, context.records, context.blobs, letter, frame)
    context.metrics.rejected_frames.labels(*camera).inc()
    code = reason_code(letter)
    detail = letter.reason.partition(": ")[2] or letter.reason
    answer = STATUS_BY_CODE.get(code, status.HTTP_422_UNPROCESSABLE_CONTENT)
    raise HTTPException(answer, f"cannot use the image ({code}): {detail}")


@router.post(
    "/v1/inspect",
    responses={
        413: {"description": "The image or the request is larger than the limit (kept as a dead letter)"},
        422: {
            "description": "The frame cannot be inspected (kept as a dead letter: unknown line, camera or "
            "recipe, capture time in the future, undecodable image) or a field is invalid"
        },
        503: {"description": "No model is loaded, or the detector failed on this frame"},
        507: {"description": "The blob store is full"},
    },
)
async def inspect_frame(
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
    inference = context.inference
    if inference is None:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, "no model loaded: start the API with --model DIR"
        )
    data = await image.read()
    camera = (line_id, camera_id)
    captured = CapturedFrame(
        frame_id=new_frame_id(),
        line_id=line_id,
        station_id=station_id,
        camera_id=camera_id,
        recipe=recipe,
        captured_at=captured_at or datetime.now(UTC),
        source_ref=f"upload {image.filename or 'frame'!r} ({len(data)} bytes) from {line_id}/{camera_id}",
        part_id=part_id,
        data=data,
    )
    admitted = await asyncio.to_thread(admit, captured, context.rules, context.blobs)
    if admitted.letter is not None or admitted.frame is None or admitted.image is None:
        assert admitted.letter is not None
        stored = not admitted.letter.original_ref.startswith("upload ")  # the letter points at the blob
        await _refuse(context, admitted.letter, camera, stored)
    frame, pixels = admitted.frame, admitted.image
    assert frame is not None and pixels is not None
    start = time.perf_counter()
    process = join_process(context.history, frame) if context.history is not None else MISSING_PROCESS
    timings = admitted.timings_ms | {"join": elapsed_ms(start)}
    try:
        detected = await inference.detect(recipe, [pixels], [frame_size(frame)])
    except Exception as err:  # the detector failed on it, or is gone: the frame is kept as a dead letter
        detail = f"{type(err).__name__}: {err}"
        letter = reject("inspect", "inspect_error", detail, frame.image.uri, frame.frame_id)
        await asyncio.to_thread(keep_dead_letter, context.records, context.blobs, letter, True)
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, f"the detector failed: {detail}") from err
    try:
        (inspection,) = await asyncio.to_thread(
            finish_batch, [frame], detected, context.blobs, [process], timings_ms=[timings]
        )
    except BlobStoreFull as err:
        letter = reject("inspect", "blob_store_full", str(err), frame.image.uri, frame.frame_id)
        await _refuse(context, letter, camera, True)
    ((error, _),) = await asyncio.to_thread(store_group, context.records, context.blobs, [inspection])
    if error is not None:
        letter = reject("store", "store_error", str(error), frame.image.uri, frame.frame_id)
        await asyncio.to_thread(keep_dead_letter, context.records, context.blobs, letter, True)
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, f"the record could not be stored: {error}")
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
