"""Storing a group of records: blobs made durable, records upserted, raw frames dropped if asked.

Every runtime stores the same way: the embedded line a group of records at a time, a Faust sink a
batch off its topic, the API one record. Upserts are keyed by ``frame_id``, so storing a record
twice (a redelivered message, a resumed run) leaves one record.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from schemas.dead_letter import DeadLetter
from schemas.inspection import Inspection
from services.steps.admit import elapsed_ms
from services.storage.errors import RecordStoreUnavailable
from services.storage.ports import BlobStore, RecordStore

log = logging.getLogger(__name__)

Stored = tuple[Exception | None, float]
"""For one record: the error that kept it from being stored (None when stored), and the ms it took."""


def store_group(
    records: RecordStore, blobs: BlobStore, inspections: Sequence[Inspection], keep_frames: bool = True
) -> list[Stored]:
    """Make the blobs durable, upsert the records, then drop their frame blobs unless ``keep_frames``.

    The records go in one transaction; when that fails they are tried one by one, so that only the
    ones that cannot be stored fail. When the store's server is away (RecordStoreUnavailable) every
    record gets that error: the caller waits and sends them again, it does not dead-letter them. A
    record that failed keeps its frame: the dead letter the caller writes for it points at the frame.
    """
    if not inspections:
        return []
    start = time.perf_counter()
    try:
        blobs.sync()  # a group commit: one flush for every frame and heat map of the group
    except Exception as err:  # the disk refused: no record may point at blobs that are not durable
        return [(err, elapsed_ms(start))] * len(inspections)
    results: list[Stored] = []
    start = time.perf_counter()
    try:
        records.upsert_inspections(list(inspections))
        results = [(None, elapsed_ms(start) / len(inspections))] * len(inspections)
    except RecordStoreUnavailable as err:  # the server is away: every record waits, none is to blame
        return [(err, elapsed_ms(start))] * len(inspections)
    except Exception:  # find the records that cannot be stored
        log.warning("storing %d records together failed; storing them one by one", len(inspections))
        for inspection in inspections:
            start = time.perf_counter()
            try:
                records.upsert_inspection(inspection)
                results.append((None, elapsed_ms(start)))
            except Exception as err:  # e.g. the disk under the record store is full: nothing written
                results.append((err, elapsed_ms(start)))
    if not keep_frames:
        for inspection, (error, _) in zip(inspections, results, strict=True):
            if error is None and inspection.image is not None:
                delete_frame(blobs, inspection.image.uri)
    return results


def delete_frame(blobs: BlobStore, uri: str) -> None:
    """Drop a raw frame's blob; a failure is logged, never raised (the record is stored already)."""
    try:
        blobs.delete(uri)
    except OSError as err:
        log.warning("could not delete frame blob %s: %s", uri, err)


def keep_dead_letter(records: RecordStore, blobs: BlobStore, letter: DeadLetter, frame: bool) -> None:
    """Store a dead letter; when it points at a stored frame (``frame``), make that frame durable
    first. Raises what the record store raises."""
    if frame:
        try:
            blobs.sync()
        except Exception as err:
            log.error("could not make the blobs durable before a dead letter: %s", err)
    records.add_dead_letter(letter)
