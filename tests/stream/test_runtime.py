"""The embedded runtime with a stand-in detector: back pressure, draining, dead letters, disk full."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
import torch

from schemas.dead_letter import DeadLetter, reject
from services.inference import local
from services.inference.local import LocalInference, detector_plan
from services.ingest.csv_replay import CsvProcessSource
from services.ingest.ports import CapturedFrame
from services.steps.admit import encode_frame
from services.storage.errors import BlobStoreFull
from services.storage.file_blob_store import FileBlobStore
from services.storage.sqlite_record_store import SqliteRecordStore
from services.stream import runtime
from services.stream.runtime import Line, LineOptions
from services.vision.inspector import Inspector
from tests.stream.fakes import T0, FakeDetector, ListSource, captured


@pytest.fixture
def detector(monkeypatch: pytest.MonkeyPatch) -> FakeDetector:
    return FakeDetector().install(monkeypatch)


def make_line(
    source: ListSource,
    records: SqliteRecordStore,
    blobs: FileBlobStore,
    detector: FakeDetector | None = None,
    **options: Any,
) -> Line:
    process = options.pop("process", [])
    detector = detector or FakeDetector()
    detector.slots = options.pop("detectors", detector.slots)
    return Line([source], process, detector, records, blobs, LineOptions(**options))


@pytest.mark.parametrize("detectors", [1, 2, 3])
def test_every_frame_read_is_stored_once(
    detector: FakeDetector, records: SqliteRecordStore, blobs: FileBlobStore, detectors: int
) -> None:
    source = ListSource([captured(i) for i in range(20)])
    line = make_line(source, records, blobs, detector, max_batch=4, detectors=detectors)
    summary = asyncio.run(line.run())
    assert (summary.frames_in, summary.inspected, summary.frame_dead_letters) == (20, 20, 0)
    assert records.count_inspections() == 20
    assert max(detector.batches) <= 4
    assert source.closed
    stored = records.get_inspection(captured(7).frame_id)
    assert stored is not None and stored.part_id == "part-0007"
    assert len(list(blobs.root.rglob("*.png"))) == 20 + 1  # every frame went to the blob store first
    assert (detector.starts, detector.closes) == (1, 1)  # the line started and closed its port


def test_a_slow_detector_holds_the_source_back(
    monkeypatch: pytest.MonkeyPatch, records: SqliteRecordStore, blobs: FileBlobStore
) -> None:
    gate = threading.Event()
    detector = FakeDetector(gate).install(monkeypatch)
    source = ListSource([captured(i) for i in range(100)])
    line = make_line(source, records, blobs, detector, max_batch=1, queue_size=2, detectors=2)

    async def scenario() -> int:
        task = asyncio.create_task(line.run())
        await asyncio.to_thread(detector.entered.wait, 30)
        await asyncio.sleep(0.3)  # room for a runaway source to read ahead, if the queues let it
        reads_while_blocked = source.reads
        gate.set()
        await task
        return reads_while_blocked

    reads_while_blocked = asyncio.run(scenario())
    # a frame in each of the two detectors, two queued before them, one in the join, two queued
    # before it, one read and decoded in ingest, waiting for room
    assert reads_while_blocked <= 8
    assert records.count_inspections() == 100


def test_stop_drains_every_frame_already_read(
    monkeypatch: pytest.MonkeyPatch, records: SqliteRecordStore, blobs: FileBlobStore
) -> None:
    gate = threading.Event()
    detector = FakeDetector(gate).install(monkeypatch)
    source = ListSource([captured(i) for i in range(100)])
    line = make_line(source, records, blobs, detector, max_batch=2, queue_size=4)

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
        calls["n"] += width > 1  # frames (the fake detector's heat maps are 1 x 1 and still fit)
        if calls["n"] > 5 and width > 1:
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


# ------------------------------------------------------------------- detect, finish, store stages


@pytest.mark.parametrize("detectors", [1, 2])
def test_the_detectors_run_at_most_one_batch_ahead_of_finishing(
    monkeypatch: pytest.MonkeyPatch, records: SqliteRecordStore, blobs: FileBlobStore, detectors: int
) -> None:
    held = threading.Event()
    detector = FakeDetector(finish_gate=held).install(monkeypatch)
    source = ListSource([captured(i) for i in range(40)])
    line = make_line(source, records, blobs, detector, max_batch=2, detectors=detectors)

    async def scenario() -> int:
        task = asyncio.create_task(line.run())
        await asyncio.to_thread(detector.finishing.wait, 30)
        await asyncio.sleep(0.3)  # room for the detector to run ahead, if the queue let it
        detected_while_held = len(detector.batches)
        held.set()
        await task
        return detected_while_held

    detected_while_held = asyncio.run(scenario())
    # one batch being finished, one waiting for it, one per detector detected and waiting to be handed over
    assert 2 <= detected_while_held <= 2 + detectors
    assert records.count_inspections() == 40
    assert sum(detector.finished) == 40


class FlakyRecords(SqliteRecordStore):
    """Fails to store ``bad`` (and any group that holds it); holds the first upsert until ``release``
    so that records pile up."""

    def __init__(self, path: Path, bad: str, release: threading.Event) -> None:
        super().__init__(path)
        self.bad, self.release, self.calls = bad, release, 0
        self.threads: list[int] = []
        self.groups: list[int] = []

    def upsert_inspections(self, inspections: Any) -> None:
        self.calls += 1
        if self.calls == 1:
            self.release.wait(timeout=30)
        self.threads.append(threading.get_ident())
        self.groups.append(len(inspections))
        if any(inspection.frame_id == self.bad for inspection in inspections):
            raise OSError("disk I/O error")
        super().upsert_inspections(inspections)


def test_waiting_records_are_stored_together_and_a_bad_one_fails_alone(
    detector: FakeDetector, blobs: FileBlobStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()
    records = FlakyRecords(tmp_path / "flaky.db", captured(9).frame_id, release)
    groups: list[int] = []
    store_group = Line._store_group

    def counting(self: Line, group: list[Any]) -> Any:
        groups.append(len(group))
        return store_group(self, group)

    monkeypatch.setattr(Line, "_store_group", counting)
    line = make_line(ListSource([captured(i) for i in range(20)]), records, blobs, max_batch=2)

    async def scenario() -> None:
        task = asyncio.create_task(line.run())
        await asyncio.sleep(0.5)  # the first record is held: the others wait in the store queue
        release.set()
        await task

    try:
        asyncio.run(scenario())
        assert max(groups) > 1 and sum(groups) == 20
        assert len(groups) < 20
        assert max(records.groups) > 1  # stored together, in one transaction
        summary = line.summary
        assert (summary.inspected, summary.frame_dead_letters, summary.dead_letters) == (
            19,
            1,
            {"store_error": 1},
        )
        assert summary.stopped_by is not None and "disk I/O error" in summary.stopped_by
        assert records.count_inspections() == 19
        assert records.get_inspection(captured(9).frame_id) is None
        (letter,) = records.list_dead_letters()
        assert (letter.source, letter.frame_id) == ("store", captured(9).frame_id)
        assert blobs.exists(letter.original_ref)  # the frame of a record that failed is kept
    finally:
        records.close()


@pytest.mark.parametrize("step", ["detect", "finish"])
def test_a_batch_that_fails_is_dead_lettered_and_the_line_goes_on(
    detector: FakeDetector,
    records: SqliteRecordStore,
    blobs: FileBlobStore,
    monkeypatch: pytest.MonkeyPatch,
    step: str,
) -> None:
    real = detector.detect_now if step == "detect" else runtime.finish_batch
    calls = {"n": 0}

    def failing_second_batch(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("out of memory")
        return real(*args, **kwargs)

    if step == "detect":
        monkeypatch.setattr(detector, "detect_now", failing_second_batch)
    else:
        monkeypatch.setattr(runtime, "finish_batch", failing_second_batch)
    line = make_line(
        ListSource([captured(i) for i in range(12)]),
        records,
        blobs,
        detector,
        max_batch=4,
        max_wait_ms=1000,
        detectors=1,
    )
    summary = asyncio.run(line.run())
    assert (summary.inspected, summary.frame_dead_letters) == (8, 4)
    assert summary.dead_letters == {"inspect_error": 4}
    assert summary.stopped_by is None
    letters = records.list_dead_letters()
    assert {letter.source for letter in letters} == {"inspect"}
    assert all("RuntimeError: out of memory" in letter.reason for letter in letters)
    assert records.count_inspections() == 8


def test_the_detectors_share_the_torch_threads_of_the_caller() -> None:
    assert detector_plan(None, None, 2) == (2, 1)
    assert detector_plan(None, None, 1) == (1, 1)
    assert detector_plan(None, None, 8) == (2, 4)
    assert detector_plan(3, None, 8) == (3, 2)
    assert detector_plan(1, None, 8) == (1, 8)
    assert detector_plan(2, 3, 2) == (2, 3)
    with pytest.raises(ValueError, match="detectors"):
        detector_plan(0, None, 2)
    with pytest.raises(ValueError, match="threads"):
        detector_plan(None, 0, 2)


def test_each_local_detector_thread_runs_with_its_own_torch_thread_count(
    monkeypatch: pytest.MonkeyPatch, records: SqliteRecordStore, blobs: FileBlobStore
) -> None:
    seen: dict[str, int] = {}
    fake = FakeDetector()

    def detect(inspector: Any, images: Any, sizes: Any) -> Any:
        seen[threading.current_thread().name] = torch.get_num_threads()
        return fake.detect_now("housing-A", images, sizes)

    monkeypatch.setattr(local, "detect_batch", detect)
    inference = LocalInference({"housing-A": cast(Inspector, object())}, detectors=2, threads=1)
    source = ListSource([captured(i) for i in range(16)])
    line = Line([source], [], inference, records, blobs, LineOptions(max_batch=2))
    before = torch.get_num_threads()
    summary = asyncio.run(line.run())
    assert summary.inspected == 16
    assert set(seen.values()) == {1}
    assert all(name.startswith("linewatch-detector-") for name in seen)
    assert torch.get_num_threads() == before  # the caller's own count is left as it was
    elsewhere: list[int] = []
    thread = threading.Thread(target=lambda: elsewhere.append(torch.get_num_threads()))
    thread.start()
    thread.join()
    assert elsewhere == [before]  # and so is the default of threads started later


class WatchedBlobs(FileBlobStore):
    """A group-commit file store that remembers which blobs were put and not yet synced."""

    def __init__(self, root: Path, fail_sync: bool = False) -> None:
        super().__init__(root, group_commit=True)
        self.not_durable: set[str] = set()
        self.stored: set[str] = set()
        self.syncs, self.fail_sync = 0, fail_sync

    def put(self, data: bytes, encoding: str, width: int, height: int) -> Any:
        ref = super().put(data, encoding, width, height)
        if ref.uri not in self.stored:  # the same bytes put again stay as durable as they were
            self.not_durable.add(ref.uri)
            self.stored.add(ref.uri)
        return ref

    def sync(self) -> None:
        if self.fail_sync:
            raise OSError(5, "Input/output error")
        self.syncs += 1
        self.not_durable.clear()
        super().sync()


class CheckingRecords(SqliteRecordStore):
    """Fails the test's check when a record is stored while a blob it points at is not durable."""

    def __init__(self, path: Path, blobs: WatchedBlobs) -> None:
        super().__init__(path)
        self.blobs = blobs
        self.early: list[str] = []

    def upsert_inspections(self, inspections: Any) -> None:
        for inspection in inspections:
            uris = {ref.uri for ref in (inspection.image, inspection.heatmap) if ref is not None}
            self.early += sorted(uris & self.blobs.not_durable)
        super().upsert_inspections(inspections)


def test_with_group_commit_a_record_is_stored_only_after_its_blobs_are_synced(
    detector: FakeDetector, tmp_path: Path
) -> None:
    """The real finish step puts each frame's heat map; the group of records is stored after a sync."""
    blobs = WatchedBlobs(tmp_path / "blobs")
    records = CheckingRecords(tmp_path / "records.db", blobs)

    try:
        summary = asyncio.run(make_line(ListSource([captured(i) for i in range(30)]), records, blobs).run())
        assert summary.inspected == records.count_inspections() == 30
        stored = records.get_inspection(captured(3).frame_id)
        assert stored is not None and stored.image is not None and stored.heatmap is not None
        assert records.early == []
        assert 1 <= blobs.syncs <= 30  # once per group of records stored together
    finally:
        records.close()


def test_when_the_blobs_cannot_be_synced_no_record_is_stored_and_the_line_stops(
    detector: FakeDetector, tmp_path: Path
) -> None:
    blobs = WatchedBlobs(tmp_path / "blobs", fail_sync=True)
    records = SqliteRecordStore(tmp_path / "records.db")
    try:
        line = make_line(ListSource([captured(i) for i in range(10)]), records, blobs)
        summary = asyncio.run(line.run())
        assert records.count_inspections() == 0 and summary.inspected == 0
        assert summary.stopped_by is not None and "Input/output error" in summary.stopped_by
        assert summary.dead_letters.get("store_error", 0) >= 1
    finally:
        records.close()


def test_the_line_feeds_its_stored_records_to_the_drift_monitors(
    detector: FakeDetector, records: SqliteRecordStore, blobs: FileBlobStore
) -> None:
    """No process source: every frame's process data is missing, and the line says so in an alert."""
    from services.analytics.alerting import Alerting, AlertSettings
    from services.analytics.drift import DriftSettings

    alerting = Alerting(records, AlertSettings(drift=DriftSettings(process_window=10, check_every=5)))
    source = ListSource([captured(i) for i in range(30)])
    line = Line([source], [], detector, records, blobs, LineOptions(max_batch=4), alerting=alerting)
    summary = asyncio.run(line.run())
    assert summary.inspected == 30 and summary.alerts == 1
    (alert,) = records.list_alerts()
    assert alert.kind == "process_data" and alert.camera_id == "cam-1"
    assert any("alerts        1 raised" in text for text in summary.lines())


def test_the_line_clusters_its_defects_in_the_background(
    inspector: Inspector, records: SqliteRecordStore, blobs: FileBlobStore
) -> None:
    """The real detector on rendered defective parts; clustering due after 20 defects; the line's end
    waits for the run, whose cluster ids are then in the stored records."""
    from services.analytics.alerting import Alerting
    from services.analytics.clustering import ClusterSettings
    from services.ingest.synthetic import render_part

    rng = np.random.default_rng(3)
    kinds = ("sink_mark", "crack", "contamination")
    frames = [captured(i, image=render_part(rng, [kinds[i % 3]], 256)[0]) for i in range(45)]
    settings = ClusterSettings(every_s=0.01, min_new_defects=20, reducer="pca", min_cluster_size=5)
    alerting = Alerting(records, clustering=settings)
    inference = LocalInference({"housing-A": inspector}, detectors=1, threads=1)
    line = Line(
        [ListSource(frames)], [], inference, records, blobs, LineOptions(max_batch=4), alerting=alerting
    )
    summary = asyncio.run(line.run())
    assert summary.inspected == 45
    assert alerting.clustering is not None and alerting.clustering.runs
    clustered = [d.cluster_id for r in records.query_inspections() for d in r.defects if r.verdict == "NG"]
    assert sum(c is not None for c in clustered) >= 15
