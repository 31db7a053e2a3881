"""Frame ids for replayable sources: the same frame gets the same id on every replay.

A replay (after a crash, or of a folder) then upserts the records it already stored instead of
adding new ones. The id is a valid UUIDv7: its time is the capture time, its random bits are a
hash of a key that names the frame within its source (a file path, a part id).
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def replay_frame_id(captured_at: datetime, key: str) -> str:
    """A UUIDv7 string made from ``captured_at`` (milliseconds) and a hash of ``key``."""
    unix_ms = max(0, int((captured_at - _EPOCH).total_seconds() * 1000))
    random74 = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:10], "big") >> 6
    rand_a, rand_b = random74 >> 62, random74 & ((1 << 62) - 1)
    value = (unix_ms << 80) | (0x7 << 76) | (rand_a << 64) | (0b10 << 62) | rand_b
    return str(uuid.UUID(int=value))
