"""Records on Kafka topics: JSON (the records' own schema), keyed so that order holds per camera.

A message that is not a valid record becomes a dead letter that quotes it, never an exception: a
worker never dies on one bad message.
"""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel, ValidationError

from schemas.dead_letter import DeadLetter, reject
from schemas.frame import Frame

R = TypeVar("R", bound=BaseModel)
EXCERPT_BYTES = 200


def encode(record: BaseModel) -> bytes:
    return record.model_dump_json().encode("utf-8")


def decode_record(kind: type[R], data: bytes | None, step: str, where: str) -> R | DeadLetter:
    """``data`` as a ``kind`` record, or a ``malformed_message`` dead letter from ``step`` that
    quotes the message's start and says where it was read (topic, partition, offset)."""
    try:
        if data is None:
            raise ValueError("the message has no value")
        return kind.model_validate_json(data)
    except (ValidationError, ValueError) as err:
        excerpt = (data or b"")[:EXCERPT_BYTES].decode("utf-8", "replace")
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        detail = f"not a {kind.__name__} record ({first}); {len(data or b'')} bytes at {where}"
        return reject(step, "malformed_message", detail, excerpt or "<empty>")


def frame_key(frame: Frame) -> bytes:
    """Frames of one camera go to one partition, in the order they were taken."""
    return f"{frame.line_id}/{frame.camera_id}".encode()


def line_key(line_id: str) -> bytes:
    return line_id.encode()
