"""The distributed line end to end, on a real broker (Tansu) and real Faust workers.

Frames are published by the producers of ``services/distributed/ingest.py`` (the claim check into a
file blob store), ``linewatch worker`` runs as a process of its own (killed with SIGKILL where a test
says so), and the records land in SQLite: every frame exactly once, with its process snapshot.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from services.commands.compose import open_stores
from services.config import LinewatchSettings, load_settings
from services.distributed.ingest import publish_frames, publish_process
from services.distributed.producer import Publisher
from services.distributed.topics import ensure_topics
from services.ingest.ports import CapturedFrame
from services.ingest.simulator_source import SimulatorSource
from services.ingest.synthetic import SyntheticLine
from services.ingest.synthetic_source import SyntheticSource
from services.storage.query import InspectionQuery
from services.storage.sqlite_record_store import SqliteRecordStore
from tests.distributed.conftest import Worker, write_config

pytestmark = pytest.mark.integration
SEED = 4


def produce(
    settings: LinewatchSettings, parts: int, process: bool = True, first: int = 0, cameras: int = 1
) -> list[str]:
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
        names = [f"cam-{i + 1}" for i in range(cameras)]
        source = SyntheticSource(seed=SEED, parts=first + parts, camera_ids=names)
        frames = [f for f in source.frames() if isinstance(f, CapturedFrame)][first:]
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

    def __init__(self, items: list[CapturedFrame]) -> None:
        self.items = items

    def frames(self) -> Iterator[CapturedFrame]:
        yield from self.items

    def close(self) -> None:
        pass


def wait_for_records(path: Path, count: int, worker: Worker, timeout_s: float = 90) -> SqliteRecordStore:
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
    if worker.process.poll() is None:
        os.kill(worker.process.pid, signal.SIGUSR1)  # the worker logs where its tasks wait
        time.sleep(1)
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


def test_a_worker_killed_mid_stream_and_started_again_loses_and_duplicates_nothing(
    tmp_path: Path, broker: str, model_dir: Path
) -> None:
    """SIGKILL (the worker and its detectors at once) after some records are stored; the frames
    published after the process samples can only be joined once the restarted worker has read its
    process history back from the topic."""
    config = write_config(tmp_path, broker, model_dir)
    settings = load_settings(config)
    first = produce(settings, 8)
    worker = Worker(config, "first")
    records = wait_for_records(tmp_path / "records.db", 8, worker)
    records.close()
    time.sleep(4)  # past the commit interval: the process samples' offsets are committed
    rest = produce(settings, 32, process=False, first=8)
    records = wait_for_records(tmp_path / "records.db", 12, worker)
    records.close()
    worker.kill()
    assert worker.process.returncode == -9
    worker = Worker(config, "second")
    try:
        records = wait_for_records(tmp_path / "records.db", 40, worker)
        time.sleep(3)
        stored = records.query_inspections(InspectionQuery(limit=1000))
        assert sorted(r.frame_id for r in stored) == sorted(first + rest)  # none lost, none twice
        assert all(r.process.status == "ok" for r in stored)  # the history came back from its topic
        assert "process history: 18 samples read back" in worker.output()
        records.close()
    finally:
        worker.stop()


def test_malformed_messages_are_dead_letters_and_the_worker_lives(
    tmp_path: Path, broker: str, model_dir: Path
) -> None:
    """Also a sink into a second record store: it stores what the workers publish on inspections."""
    config = write_config(tmp_path, broker, model_dir)
    sink_url = f"sqlite:///{tmp_path / 'sink.db'}"
    raw = yaml.safe_load(config.read_text())
    raw["kafka"]["sink_records"] = sink_url
    config.write_text(yaml.safe_dump(raw))
    settings = load_settings(config)
    ensure_topics(settings.kafka)
    publisher = Publisher(settings.kafka, "test")
    topics = settings.kafka.topics
    publisher.publish(topics.frames, b"line-1/cam-1", b"{not json")
    publisher.publish(topics.frames, b"line-1/cam-1", b'{"frame_id": "x"}')
    publisher.publish(topics.process, b"line-1", b"\x00\x01 binary")
    publisher.publish(topics.inspections, b"line-1/cam-1", b"[]")
    assert publisher.flush(30) == 0
    ids = produce(settings, 4)
    worker = Worker(config)
    try:
        records = wait_for_records(tmp_path / "records.db", 4, worker)
        deadline = time.monotonic() + 30
        while records.count_dead_letters() < 4 and time.monotonic() < deadline:
            time.sleep(0.5)
        letters = records.list_dead_letters()
        assert sorted((letter.source, letter.reason.split(":")[0]) for letter in letters) == [
            ("ingest", "malformed_message"),
            ("ingest", "malformed_message"),
            ("process", "malformed_message"),
            ("store", "malformed_message"),
        ]
        assert any("{not json" in letter.original_ref for letter in letters)
        assert sorted(r.frame_id for r in records.query_inspections()) == sorted(ids)
        sink = wait_for_records(tmp_path / "sink.db", 4, worker)
        assert sorted(r.frame_id for r in sink.query_inspections()) == sorted(ids)
        assert worker.process.poll() is None
        records.close()
        sink.close()
    finally:
        worker.stop()


def inspected_by(worker: Worker) -> int:
    return sum(
        int(line.split("inspected ")[1].split()[0])
        for line in worker.output().splitlines()
        if "] inspected " in line or "distributed.worker: inspected " in line
    )


def test_two_workers_share_the_partitions_and_one_leaving_hands_its_own_over(
    tmp_path: Path, broker: str, model_dir: Path
) -> None:
    config = write_config(tmp_path, broker, model_dir)
    settings = load_settings(config)
    ensure_topics(settings.kafka)
    one, two = Worker(config, "one"), Worker(config, "two")
    try:
        time.sleep(8)  # both in the group before the frames come
        ids = produce(settings, 32, cameras=8)  # eight cameras: keys on every partition
        records = wait_for_records(tmp_path / "records.db", 32, one)
        records.close()
        assert inspected_by(one) > 0 and inspected_by(two) > 0, (one.output()[-2000:], two.output()[-2000:])
        one.stop()
        before = inspected_by(two)
        ids += produce(settings, 16, process=False, first=32, cameras=8)
        records = wait_for_records(tmp_path / "records.db", 48, two)
        assert sorted(r.frame_id for r in records.query_inspections(InspectionQuery(limit=1000))) == sorted(
            ids
        )
        assert inspected_by(two) - before >= 16  # every partition, the ones the first worker had too
        records.close()
    finally:
        one.stop()
        two.stop()


def consume(broker: str, topic: str, timeout_s: float = 30, want: int = 1) -> list[bytes]:
    """The values on ``topic`` from its start (a consumer group of its own)."""
    from confluent_kafka import Consumer

    consumer = Consumer(
        {
            "bootstrap.servers": broker,
            "group.id": f"test-{time.monotonic_ns()}",
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([topic])
    values: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline and len(values) < want:
            message = consumer.poll(0.5)
            value = message.value() if message is not None and message.error() is None else None
            if value is not None:
                values.append(value)
    finally:
        consumer.close()
    return values


def test_the_worker_publishes_alerts_and_its_leader_clusters_defects(
    tmp_path: Path, broker: str, model_dir: Path
) -> None:
    """No process samples: every frame's process data is missing, the drift monitor says so, and the
    alert is stored and published on the alerts topic; the leader's timer clusters the NG frames'
    defects (their ids and novelty are tested in tests/analytics/test_clustering.py)."""
    config = write_config(
        tmp_path,
        broker,
        model_dir,
        alerts={"drift": {"process_window": 10, "check_every": 5}},
        clustering={"every_s": 1.0, "min_new_defects": 1, "reducer": "pca", "min_cluster_size": 2},
    )
    settings = load_settings(config)
    produce(settings, 16, process=False)
    worker = Worker(config)
    try:
        records = wait_for_records(tmp_path / "records.db", 16, worker)
        (published,) = consume(broker, settings.kafka.topics.alerts)
        assert b'"kind":"process_data"' in published
        assert [a.kind for a in records.list_alerts()] == ["process_data"]
        ng = records.query_inspections(InspectionQuery(verdict="NG"))
        defects = sum(1 for r in ng for d in r.defects if d.embedding)
        assert defects >= 2
        deadline = time.monotonic() + 30  # the leader's timer fires every second
        while time.monotonic() < deadline and not re.search(r"clustered \d+ defects", worker.output()):
            time.sleep(0.5)
        found = re.search(r"clustered (\d+) defects", worker.output())
        assert found is not None and int(found.group(1)) == defects, worker.output()[-3000:]
        records.close()
    finally:
        worker.stop()
