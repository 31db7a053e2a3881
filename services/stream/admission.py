"""Letting a frame onto the line: is it one we can inspect, and its bytes into the blob store.

The claim check: a frame's bytes are stored before it is inspected, and from then on it travels
as a :class:`Frame` holding the blob reference. Frames from unknown cameras, of recipes without a
model, too large or without a readable image header are refused first, and never stored.
"""

from __future__ import annotations

from collections.abc import Collection

from pydantic import ValidationError

from schemas.dead_letter import DeadLetter
from schemas.frame import Frame
from services.ingest.ports import CapturedFrame
from services.storage.ports import BlobStore
from services.stream.rejects import reject
from services.stream.steps import encode_frame, probe_image


def admission_check(
    captured: CapturedFrame, cameras: Collection[str] | None, recipes: Collection[str]
) -> DeadLetter | None:
    """A dead letter for a frame from a camera not in ``cameras`` (when given) or of a recipe
    with no model; None when the frame may go on."""
    ref = captured.source_ref
    if cameras is not None and captured.camera_id not in cameras:
        detail = f"camera {captured.camera_id!r} is not one of {', '.join(sorted(cameras))}"
        return reject("ingest", "unknown_camera", detail, ref, captured.frame_id)
    if captured.recipe not in recipes:
        detail = (
            f"no model for recipe {captured.recipe!r} (models for: {', '.join(sorted(recipes)) or 'none'})"
        )
        return reject("ingest", "no_model", detail, ref, captured.frame_id)
    return None


def claim_check(captured: CapturedFrame, blobs: BlobStore, max_frame_bytes: int) -> Frame | DeadLetter:
    """Store the frame's bytes (PNG for a decoded frame) and return the :class:`Frame` that refers
    to them, or a dead letter. Raises ``BlobStoreFull`` when the disk is full (nothing is stored)."""
    ref, frame_id = captured.source_ref, captured.frame_id
    if captured.data is not None:
        data = captured.data
    else:
        assert captured.image is not None  # a captured frame holds one of the two
        data = encode_frame(captured.image)
    if len(data) > max_frame_bytes:
        detail = f"frame is {len(data)} bytes, above the {max_frame_bytes} byte limit"
        return reject("ingest", "oversized", detail, ref, frame_id)
    probed = probe_image(data)
    if isinstance(probed, str):
        return reject("ingest", "undecodable", probed, ref, frame_id)
    encoding, width, height = probed
    blob = blobs.put(data, encoding, width, height)
    try:
        return Frame(
            frame_id=frame_id,
            line_id=captured.line_id,
            station_id=captured.station_id,
            camera_id=captured.camera_id,
            part_id=captured.part_id,
            recipe=captured.recipe,
            captured_at=captured.captured_at,
            image=blob,
        )
    except ValidationError as err:
        return reject("ingest", "invalid_frame", str(err).replace("\n", " "), blob.uri, frame_id)
