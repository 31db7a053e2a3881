"""Time-ordered identifiers: UUIDv7 (RFC 9562) strings for frames, alerts and other records.

Layout of the 128 bits: 48-bit unix time in milliseconds, 4-bit version (7), 12 random bits,
2-bit variant (0b10), 62 random bits. Within one process the ids are strictly increasing: when
the clock has not moved on (or went back), the 74 random bits of the previous id are incremented
(RFC 9562 section 6.2, method 2).
"""

import os
import re
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated

from pydantic import AfterValidator, WithJsonSchema

UUID7_PATTERN = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-7[0-9a-fA-F]{3}-[89abAB][0-9a-fA-F]{3}-[0-9a-fA-F]{12}$"
_UUID7_RE = re.compile(UUID7_PATTERN)
_RANDOM_BITS = 74
_MAX_MS = (1 << 48) - 1


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _compose(unix_ms: int, random74: int) -> uuid.UUID:
    rand_a = random74 >> 62
    rand_b = random74 & ((1 << 62) - 1)
    value = (unix_ms << 80) | (0x7 << 76) | (rand_a << 64) | (0b10 << 62) | rand_b
    return uuid.UUID(int=value)


class Uuid7Generator:
    """Thread-safe generator of strictly increasing UUIDv7 strings."""

    def __init__(self, clock_ms: Callable[[], int] = _now_ms) -> None:
        self._clock_ms = clock_ms
        self._lock = threading.Lock()
        self._last_ms = -1
        self._last_random = 0

    def reset(self) -> None:
        """Forget the previous id (used after fork, so that parent and child never collide)."""
        with self._lock:
            self._last_ms = -1
            self._last_random = 0

    def __call__(self) -> str:
        with self._lock:
            unix_ms = self._clock_ms()
            if unix_ms > self._last_ms:
                random74 = secrets.randbits(_RANDOM_BITS)
            else:
                unix_ms = self._last_ms
                random74 = self._last_random + 1
                if random74 >> _RANDOM_BITS:
                    unix_ms += 1
                    random74 = secrets.randbits(_RANDOM_BITS)
            if not 0 <= unix_ms <= _MAX_MS:
                raise ValueError(f"clock value {unix_ms} ms does not fit the 48-bit UUIDv7 timestamp")
            self._last_ms, self._last_random = unix_ms, random74
        return str(_compose(unix_ms, random74))


_generator = Uuid7Generator()
os.register_at_fork(after_in_child=_generator.reset)


def new_uuid7() -> str:
    """A new time-ordered UUIDv7 string, strictly greater than the previous one from this process."""
    return _generator()


def new_frame_id() -> str:
    """A new frame id (a UUIDv7 string): mint it once, where the frame is taken."""
    return _generator()


def validate_uuid7(value: str) -> str:
    """Return ``value`` as a canonical lower-case UUIDv7 string, or raise ValueError saying why not."""
    if not isinstance(value, str) or not _UUID7_RE.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a UUIDv7 string: expected 8-4-4-4-12 hex digits with version 7 "
            "and variant 8/9/a/b, e.g. '01956039-694b-7c2e-9a41-5d3e2b7f8c10'"
        )
    return value.lower()


def uuid7_datetime(value: str) -> datetime:
    """The UTC time encoded in the first 48 bits of a UUIDv7 string."""
    unix_ms = uuid.UUID(validate_uuid7(value)).int >> 80
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=unix_ms)


Uuid7Str = Annotated[
    str,
    AfterValidator(validate_uuid7),
    WithJsonSchema({"type": "string", "format": "uuid", "pattern": UUID7_PATTERN}),
]
"""A UUIDv7 string field, normalised to lower case."""
