"""The embedded runtime with a stand-in detector: back pressure, draining, dead letters, disk full."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from schemas.dead_letter import DeadLetter
from services.ingest.csv_replay import CsvProcessSource
from services.ingest.ports import CapturedFrame
from services.storage.errors import BlobStoreFull
from services.storage.file_blob_store import FileBlobStore
from services.storage.sqlite_record_store import SqliteRecordStore
from services.stream import runtime
from services.stream.rejects import reject
from services.stream.runtime import Line, LineOptions
from services.stream.steps import encode_frame
from tests.stream.fakes import T0, FakeDetector, ListSource, captured

MODELS: dict[str, Any] = {"housing-A": object()}  # the stand-in detector never looks at the model


@pytest.fixture
def detector(monkeypatch: pytest.MonkeyPatch) -> FakeDetector:
    fake = FakeDetector()
    monkeypatch.setattr(runtime, "inspect_batch", fake)
    return fake


def make_line(source: ListSource, records: SqliteRecordStore, blobs: FileBlobStore, **options: Any) -> Line:
    process = options.pop("process", [])
    return Line([source], process, MODELS, records, blobs, LineOptions(**options))


def test_every_frame_read_is_stored_once(
    detector: FakeDetector, records: SqliteRecordStore, blobs: FileBlobStore
) -> None:
    source = ListSource([captured(i) for i in range(20)])
    line = make_line(source, records, blobs, max_batch=4)
    summary = asyncio.run(line.run())
    assert (summary.frames_in, summary.inspected, summary.frame_dead_letters) == (20, 20, 0)
    assert records.count_inspections() == 20
    assert max(detector.batches) <= 4
    assert source.closed
    stored = records.get_inspection(captured(7).frame_id)
    assert stored is not None and stored.part_id == "part-0007"
    assert len(list(blobs.root.rglob("*.png"))) == 20  # every frame went to the blob store first


def test_a_slow_detector_holds_the_source_back(
    monkeypatch: pytest.MonkeyPatch, records: SqliteRecordStore, blobs: FileBlobStore
) -> None:
    gate = threading.Event()
    detector = FakeDetector(gate)
    monkeypatch.setattr(runtime, "inspect_batch", detector)
    source = ListSource([captured(i) for i in range(100)])
    line = make_line(source, records, blobs, max_batch=1, queue_size=2)

    async def scenario() -> int:
        task = asyncio.create_task(line.run())
        await asyncio.to_thread(detector.entered.wait, 30)
        await asyncio.sleep(0.3)  # room for a runaway source to read ahead, if the queues let it
        reads_while_blocked = source.reads
        gate.set()
        await task
        return reads_while_blocked

    reads_while_blocked = asyncio.run(scenario())
    # one frame in the detector, two queued before it, one in decode, two queued, one in ingest, one read
    assert reads_while_blocked <= 8
    assert records.count_inspections() == 100


def test_stop_drains_every_frame_already_read(
    monkeypatch: pytest.MonkeyPatch, records: SqliteRecordStore, blobs: FileBlobStore
) -> None:
    gate = threading.Event()
    detector = FakeDetector(gate)
    monkeypatch.setattr(runtime, "inspect_batch", detector)
    source = ListSource([captured(i) for i in range(100)])
    line = make_line(source, records, blobs, max_batch=2, queue_size=4)

    async def scenario() -> None:
        task = asyncio.create_task(line.run())
        await asyncio.to_thread(detector.entered.wait, 30)
        line.stop()
        gate.set()
        await task

    asyncio.run(scenario())
    summary = line.summary
    assert 0 < summary.frames_in < 100
    assert summary.inspected == summary.frames_in
    assert records.count_inspections() == summary.frames_in
    assert source.closed


def test_bad_frames_become_dead_letters_and_the_line_goes_on(
    detector: FakeDetector, records: SqliteRecordStore, blobs: FileBlobStore, tmp_path: Path
) -> None:
    noise = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    truncated = encode_frame(noise)[:500]
    items: list[CapturedFrame | DeadLetter] = [
        captured(0),
        captured(1, camera_id="cam-9"),  # not a configured camera
        captured(2, recipe="cap-B"),  # no model for this recipe
        captured(3, image=noise),  # ~200 kB of PNG, above the limit
        captured(4, captured_at=datetime.now(UTC) + timedelta(hours=1)),  # a camera clock ahead
        captured(5, data=b"this is not an image"),  # no readable header
        captured(6, data=truncated),  # a header, then nothing
        reject("ingest", "unreadable_file", "permission denied", "/frames/7.png"),
        captured(8),
    ]
    csv_path = tmp_path / "process.csv"
    csv_path.write_text(
        "ts,machine_id,mould_temp_c\n"
        f"{T0.isoformat()},imm-1,60.0\n"
        f"{(T0 + timedelta(seconds=4)).isoformat()},imm-1,sixty\n"
        f"{(T0 + timedelta(seconds=5)).isoformat()},imm-1,61.0\n"
    )
    line = make_line(
        ListSource(items),
        records,
        blobs,
        cameras=frozenset({"cam-1", "cam-2"}),
        max_frame_bytes=100_000,
        process=[CsvProcessSource(csv_path, "line-1")],
    )
    summary = asyncio.run(line.run())
    assert summary.dead_letters == {
        "unknown_camera": 1,
        "no_model": 1,
        "oversized": 1,
        "future_timestamp": 1,
        "undecodable": 2,
        "unreadable_file": 1,
        "malformed_row": 1,
    }
    assert (summary.frames_in, summary.inspected, summary.frame_dead_letters) == (9, 2, 7)
    assert records.count_inspections() == 2
    letters = records.list_dead_letters()
    assert len(letters) == 8
    steps = sorted(letter.source for letter in letters)
    assert steps == ["decode", "ingest", "ingest", "ingest", "ingest", "ingest", "ingest", "process"]
    metrics = line.metrics.text().decode()
    assert 'linewatch_line_dead_letters_total{reason="unknown_camera",step="ingest"} 1.0' in metrics
    assert 'linewatch_line_frames_out_total{camera_id="cam-1",verdict="OK"} 2.0' in metrics
    last = records.get_inspection(captured(8).frame_id)
    assert last is not None and last.process.params == {"mould_temp_c": 61.0}  # the malformed row skipped


def test_a_full_disk_at_the_claim_check_stops_the_line_with_nothing_half_written(
    detector: FakeDetector, monkeypatch: pytest.MonkeyPatch, records: SqliteRecordStore, blobs: FileBlobStore
) -> None:
    calls = {"n": 0}
    real_put = FileBlobStore.put

    def put(self: FileBlobStore, data: bytes, encoding: str, width: int, height: int) -> Any:
        calls["n"] += 1
        if calls["n"] > 5:
            raise BlobStoreFull("No space left on device")
        return real_put(self, data, encoding, width, height)

    monkeypatch.setattr(FileBlobStore, "put", put)
    line = make_line(ListSource([captured(i) for i in range(50)]), records, blobs)
    summary = asyncio.run(line.run())
    assert summary.stopped_by is not None and "blob store full" in summary.stopped_by
    assert summary.dead_letters["blob_store_full"] >= 1
    assert summary.frames_in < 50
    assert summary.inspected == 5
    assert summary.inspected + summary.frame_dead_letters == summary.frames_in
    for inspection in records.query_inspections():
        assert records.get_inspection(inspection.frame_id) == inspection


def test_metrics_expose_queue_depth_and_step_latency(
    detector: FakeDetector, records: SqliteRecordStore, blobs: FileBlobStore
) -> None:
    line = make_line(ListSource([captured(i) for i in range(3)]), records, blobs)
    asyncio.run(line.run())
    text = line.metrics.text().decode()
    assert 'linewatch_line_queue_depth{queue="detect"} 0.0' in text
    assert 'linewatch_line_step_seconds_count{step="decode"}' not in text  # decoded frames skip decoding
    assert 'linewatch_line_step_seconds_count{step="ingest"} 3.0' in text
    assert 'linewatch_line_frames_in_total{camera_id="cam-1"} 3.0' in text
    assert "linewatch_line_latency_seconds_count 3.0" in text


class BrokenSource(ListSource):
    def frames(self) -> Iterator[CapturedFrame | DeadLetter]:
        yield from super().frames()
        raise OSError("camera unplugged")


def test_a_failing_source_stops_the_line_after_the_frames_it_gave(
    detector: FakeDetector, records: SqliteRecordStore, blobs: FileBlobStore
) -> None:
    line = make_line(BrokenSource([captured(i) for i in range(5)]), records, blobs)
    summary = asyncio.run(line.run())
    assert summary.inspected == 5
    assert summary.stopped_by is not None and "camera unplugged" in summary.stopped_by
