"""The distributed line end to end, on a real broker (Tansu) and real Faust workers.

Frames are published by the producers of ``services/distributed/ingest.py`` (the claim check into a
file blob store), ``linewatch worker`` runs as a process of its own (killed with SIGKILL where a test
says so), and the records land in SQLite: every frame exactly once, with its process snapshot.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.commands.compose import open_stores
from services.config import LinewatchSettings, load_settings
from services.distributed.ingest import publish_frames, publish_process
from services.distributed.producer import Publisher
from services.distributed.topics import ensure_topics
from services.ingest.frame_ids import replay_frame_id
from services.ingest.simulator_source import SimulatorSource
from services.ingest.synthetic import SyntheticLine
from services.ingest.synthetic_source import SyntheticSource
from services.storage.sqlite_record_store import SqliteRecordStore
from tests.distributed.conftest import Worker, write_config

pytestmark = pytest.mark.integration
SEED = 4


def produce(settings: LinewatchSettings, parts: int, process: bool = True, first: int = 0) -> list[str]:
    """Publish the process samples (when asked) and ``parts`` frames of the synthetic line; their ids."""
    ensure_topics(settings.kafka)
    publisher = Publisher(settings.kafka, "test")
    topics = settings.kafka.topics
    if process:
        machine = SyntheticLine(seed=SEED)
        samples = SimulatorSource(machine.process, machine.line_id, machine.machine_id, samples=parts + 10)
        publish_process([samples], publisher, topics.process, topics.dead_letters)
    stores = open_stores(settings.stores.records, settings.stores.blobs)
    try:
        source = SyntheticSource(seed=SEED, parts=first + parts)
        frames = list(source.frames())[first:]
        summary = publish_frames(
            [ListOf(frames)],
            settings.line_options().admission(frozenset(settings.models)),
            stores.blobs,
            publisher,
            topics.frames,
            topics.dead_letters,
        )
    finally:
        stores.close()
    assert publisher.flush(30) == 0 and publisher.failed == 0
    assert summary.published == parts
    return [frame.frame_id for frame in frames]


class ListOf:
    name = "list"

    def __init__(self, items: list) -> None:
        self.items = items

    def frames(self) -> Iterator:
        yield from self.items

    def close(self) -> None:
        pass


def wait_for_records(path: Path, count: int, worker: Worker, timeout_s: float = 180) -> SqliteRecordStore:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists():
            records = SqliteRecordStore(path)
            if records.count_inspections() >= count:
                return records
            records.close()
        if worker.process.poll() is not None:
            raise AssertionError(f"the worker exited:\n{worker.output()[-3000:]}")
        time.sleep(0.5)
    raise AssertionError(f"fewer than {count} records after {timeout_s} s:\n{worker.output()[-3000:]}")


def test_frames_become_records_exactly_once_with_their_process_snapshot(
    tmp_path: Path, broker: str, model_dir: Path
) -> None:
    settings = load_settings(write_config(tmp_path, broker, model_dir))
    ids = produce(settings, 12)
    worker = Worker(tmp_path / "linewatch.yaml")
    try:
        records = wait_for_records(tmp_path / "records.db", 12, worker)
        time.sleep(2)  # anything more (a duplicate) would land meanwhile
        stored = records.query_inspections()
        assert sorted(r.frame_id for r in stored) == sorted(ids)
        assert all(r.process.status == "ok" and r.process.params for r in stored)
        assert all(r.heatmap is not None and r.image is not None for r in stored)
        assert "NG" in {r.verdict for r in stored}  # (the first parts of seed 4 hold planted defects)
        assert records.list_dead_letters() == []
        records.close()
    finally:
        worker.stop()
