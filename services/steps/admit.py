"""Letting a frame onto the line: is it one we can inspect, its bytes into the blob store, decoded.

The claim check: a frame's bytes are stored before it is inspected, and from then on it travels
as a :class:`Frame` holding the blob reference (on a Kafka topic too: the reference, never the
bytes). Frames from unknown lines or cameras, of recipes without a model, too large or without a
readable image header are refused first, and never stored; a frame whose header reads but whose
pixels do not decode, or that claims to be taken in the future, is refused after it is stored, and
its dead letter points at the stored bytes so that nothing a camera sent is lost.

:func:`admit` runs all of it for one frame; the embedded line, a Faust worker and
``POST /v1/inspect`` call it alike.
"""

from __future__ import annotations

import io
import time
import warnings
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final, get_args

import numpy as np
from PIL import Image
from pydantic import ValidationError

from schemas.blob import BlobEncoding
from schemas.dead_letter import DeadLetter, reject
from schemas.frame import Frame
from services.ingest.ports import CapturedFrame
from services.steps.join import check_capture_time
from services.storage.errors import BlobStoreFull
from services.storage.ports import BlobStore
from services.vision.images import DEFAULT_MAX_MEGAPIXELS, ImageError, decode_image
from services.vision.overlay import encode_png

MIB: Final = 1024 * 1024
DEFAULT_MAX_FRAME_BYTES: Final = 64 * MIB
DEFAULT_CLOCK_SKEW_S: Final = 2.0
PNG_SIGNATURE: Final = b"\x89PNG\r\n\x1a\n"


def elapsed_ms(start: float) -> float:
    """Milliseconds since ``start`` (a ``time.perf_counter()`` reading)."""
    return (time.perf_counter() - start) * 1000.0


@dataclass(frozen=True)
class AdmissionRules:
    """What a frame must satisfy to be inspected; the same rules for every runtime."""

    recipes: frozenset[str]  # recipes with a model
    cameras: frozenset[str] | None = None  # None: any camera
    lines: frozenset[str] | None = None  # None: any line
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    max_megapixels: float = DEFAULT_MAX_MEGAPIXELS
    clock_skew_s: float = DEFAULT_CLOCK_SKEW_S  # capture times further ahead of the clock are refused

    def __post_init__(self) -> None:
        if self.max_frame_bytes < 1 or self.max_megapixels <= 0 or self.clock_skew_s < 0:
            raise ValueError("max_frame_bytes and max_megapixels must be positive, clock_skew_s >= 0")


@dataclass(eq=False)
class Admitted:
    """What admitting one frame came to: the frame and its pixels, or a dead letter."""

    frame: Frame | None = None
    image: np.ndarray | None = None  # decoded RGB
    letter: DeadLetter | None = None
    full: BlobStoreFull | None = None  # the blob store is full: the runtime should stop taking frames
    timings_ms: dict[str, float] = field(default_factory=dict)


def encode_frame(image: np.ndarray) -> bytes:
    """A decoded RGB frame as PNG bytes (lossless), for the blob store."""
    return encode_png(image)


def png_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from a PNG's IHDR chunk (always the first), or None when it is not one."""
    if len(data) < 24 or not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR":
        return None
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    return (width, height) if width > 0 and height > 0 else None


def probe_image(data: bytes) -> tuple[BlobEncoding, int, int] | str:
    """The encoding, width and height from an image's header (nothing decoded), or why not.

    PNG, the line's usual frame, is read directly; the rest through Pillow's header parser."""
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


def admission_check(
    captured: CapturedFrame,
    cameras: Collection[str] | None,
    recipes: Collection[str],
    lines: Collection[str] | None = None,
) -> DeadLetter | None:
    """A dead letter for a frame from a line not in ``lines`` or a camera not in ``cameras`` (each
    when given), or of a recipe with no model; None when the frame may go on."""
    ref = captured.source_ref
    if lines is not None and captured.line_id not in lines:
        detail = f"line {captured.line_id!r} is not one of {', '.join(sorted(lines))}"
        return reject("ingest", "unknown_line", detail, ref, captured.frame_id)
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


def decode(
    frame: Frame, data: bytes, max_megapixels: float = DEFAULT_MAX_MEGAPIXELS
) -> np.ndarray | DeadLetter:
    """The frame's image as RGB uint8, or a dead letter saying why it cannot be used.

    A JPEG above ``max_megapixels`` comes back at a reduced size (decoded in the DCT domain); the
    frame keeps its full size, and detection outlines defects in the frame's pixels."""
    try:
        return decode_image(data, frame.image.uri, max_megapixels)
    except ImageError as err:
        code = "oversized" if "MP limit" in err.reason else "undecodable"
        return reject("decode", code, err.reason, frame.image.uri, frame.frame_id)


def upright(frame: Frame, image: np.ndarray) -> Frame:
    """``frame`` with its width and height swapped when decoding turned the image upright (an EXIF
    orientation of 90 or 270 degrees), so that the frame's size is the size the image is shown at."""
    height, width = image.shape[:2]
    frame_w, frame_h = frame.image.width, frame.image.height
    if width == height or frame_w == frame_h or (width > height) == (frame_w > frame_h):
        return frame
    turned = frame.image.model_copy(update={"width": frame_h, "height": frame_w})
    return frame.model_copy(update={"image": turned})


def frame_size(frame: Frame) -> tuple[int, int]:
    """The frame's (height, width) in its own pixels, which defects and heat maps are measured in:
    the stored image's size, which a reduced-size decode of a very large JPEG is not."""
    return frame.image.height, frame.image.width


def claim(
    captured: CapturedFrame | DeadLetter, rules: AdmissionRules, blobs: BlobStore, now: datetime | None = None
) -> Admitted:
    """Check a captured frame and store its bytes (the claim check): the frame, or a dead letter.

    What a producer does before it publishes the frame's reference; :func:`admit` goes on to decode.
    When the blob store is full the frame is dead-lettered and ``full`` says so: the caller decides
    whether to stop. ``now`` is the clock that capture times are checked against (default: now).
    """
    if isinstance(captured, DeadLetter):
        return Admitted(letter=captured)
    entered, admitted = time.perf_counter(), Admitted()
    admitted.letter = admission_check(captured, rules.cameras, rules.recipes, rules.lines)
    if admitted.letter is not None:
        return admitted
    try:
        frame = claim_check(captured, blobs, rules.max_frame_bytes)
    except BlobStoreFull as err:
        admitted.full = err
        frame = reject("ingest", "blob_store_full", str(err), captured.source_ref, captured.frame_id)
    if isinstance(frame, DeadLetter):
        admitted.letter = frame
        return admitted
    admitted.letter = check_capture_time(frame, now or datetime.now(UTC), rules.clock_skew_s)
    if admitted.letter is None:
        admitted.frame = frame
        admitted.timings_ms["ingest"] = elapsed_ms(entered)
    return admitted


def admit(
    captured: CapturedFrame | DeadLetter, rules: AdmissionRules, blobs: BlobStore, now: datetime | None = None
) -> Admitted:
    """:func:`claim`, then decode: the frame and its pixels, or a dead letter (a source's own dead
    letter passes through)."""
    admitted = claim(captured, rules, blobs, now)
    if admitted.frame is None:
        return admitted
    assert not isinstance(captured, DeadLetter)
    frame, image = admitted.frame, captured.image
    if image is None:
        assert captured.data is not None  # a captured frame holds one of the two
        start = time.perf_counter()
        decoded = decode(frame, captured.data, rules.max_megapixels)
        admitted.timings_ms["decode"] = elapsed_ms(start)
        if isinstance(decoded, DeadLetter):
            admitted.frame, admitted.letter = None, decoded
            return admitted
        image = decoded
    admitted.frame, admitted.image = upright(frame, image), image
    return admitted


def load_frame(frame: Frame, blobs: BlobStore, max_megapixels: float = DEFAULT_MAX_MEGAPIXELS) -> Admitted:
    """A frame whose reference came over a topic: its bytes fetched from the blob store and decoded.

    A frame whose bytes are gone (``missing_blob``) or cannot be decoded is a dead letter."""
    start = time.perf_counter()
    try:
        data = blobs.get(frame.image.uri)
    except (OSError, KeyError, ValueError) as err:
        detail = f"cannot read the frame's bytes ({type(err).__name__}: {err})"
        return Admitted(letter=reject("decode", "missing_blob", detail, frame.image.uri, frame.frame_id))
    decoded = decode(frame, data, max_megapixels)
    timings = {"decode": elapsed_ms(start)}
    if isinstance(decoded, DeadLetter):
        return Admitted(letter=decoded, timings_ms=timings)
    return Admitted(frame=upright(frame, decoded), image=decoded, timings_ms=timings)
