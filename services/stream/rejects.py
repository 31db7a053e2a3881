"""Dead letters with a reason code: ``reason`` reads ``"<code>: <detail>"``, metrics count by code."""

from __future__ import annotations

from datetime import UTC, datetime

from schemas.dead_letter import DeadLetter, reason_code

__all__ = ["reason_code", "reject"]


def reject(step: str, code: str, detail: str, original_ref: str, frame_id: str | None = None) -> DeadLetter:
    """A dead letter from ``step`` (ingest, decode, process, inspect, store) for reason ``code``."""
    return DeadLetter(
        source=step,
        reason=f"{code}: {detail}",
        original_ref=original_ref or "<none>",
        frame_id=frame_id,
        failed_at=datetime.now(UTC),
    )
