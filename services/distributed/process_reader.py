"""The process history of a worker: every partition of the ``process`` topic, read by a thread.

Each worker holds every line's recent samples, so frames keyed by camera need no co-partitioning
with the samples, and a worker that starts (or restarts) reads them back from the topic itself
(the last ``history_s`` of it), which serves as the history's changelog. It reads with a consumer
of its own, assigned to every partition, outside the workers' consumer group: it never commits,
and never takes a partition from another worker.

Faust's own global table was tried first: its recovery at start raced the frames stream (the
fetcher ran before the streams were moved to their committed offsets) and a restarted worker
skipped frames now and then (docs/decisions.md).
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from schemas.dead_letter import DeadLetter
from schemas.process import ProcessSample
from services.distributed.codec import decode_record
from services.distributed.producer import client_config
from services.steps.join import ProcessHistory

if TYPE_CHECKING:
    from services.config import KafkaSettings

log = logging.getLogger(__name__)


class ProcessReader:
    """Keeps ``history`` filled from the process topic in a daemon thread."""

    def __init__(self, settings: KafkaSettings, history: ProcessHistory, history_s: float = 600.0) -> None:
        self.settings, self.history, self.history_s = settings, history, history_s
        self.lock = threading.Lock()  # the history is read by the worker's loop, written here
        self.samples = 0
        self._caught_up = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="linewatch-process-reader", daemon=True)

    def start(self, timeout_s: float = 60.0) -> None:
        """Start reading, and wait until the history has caught up with the topic's end."""
        self._thread.start()
        if not self._caught_up.wait(timeout_s):
            log.warning("the process history has not caught up with %s after %.0f s", self.topic, timeout_s)

    @property
    def topic(self) -> str:
        return self.settings.topics.process

    def latest(self, line_id: str) -> datetime | None:
        with self.lock:
            return self.history.latest_ts(line_id)

    def _run(self) -> None:
        from confluent_kafka import Consumer, TopicPartition

        consumer = Consumer(
            client_config(self.settings)
            | {"group.id": f"{self.settings.app_id}-process-reader", "enable.auto.commit": False}
        )
        try:
            partitions = consumer.list_topics(self.topic, timeout=30).topics[self.topic].partitions
            since_ms = int((time.time() - self.history_s) * 1000)
            wanted = [TopicPartition(self.topic, p, since_ms) for p in partitions]
            starts = consumer.offsets_for_times(wanted, timeout=30)
            ends = {
                p: consumer.get_watermark_offsets(TopicPartition(self.topic, p), timeout=30)[1]
                for p in partitions
            }
            consumer.assign([TopicPartition(self.topic, tp.partition, max(tp.offset, 0)) for tp in starts])
            pending = {p for p, end in ends.items() if end > 0}
            if not pending:
                self._caught_up.set()
            while not self._stop.is_set():
                message = consumer.poll(0.5)
                if message is None:
                    if pending and all(
                        consumer.position([TopicPartition(self.topic, p)])[0].offset >= ends[p]
                        for p in pending
                    ):
                        pending.clear()
                        self._caught_up.set()
                    continue
                if message.error():
                    log.warning("reading %s: %s", self.topic, message.error())
                    continue
                partition, offset = message.partition(), message.offset() or 0
                self._take(message.value(), f"{self.topic}[{partition}]@{offset}")
                if partition in pending and offset + 1 >= ends[partition]:
                    pending.discard(partition)
                    if not pending:
                        self._caught_up.set()
        except Exception:  # never silently: the joins go stale, and the log says why
            log.exception("the process history reader stopped")
        finally:
            consumer.close()

    def _take(self, value: bytes | None, where: str) -> None:
        """A sample into the history. What is not one is skipped here: the worker's ``process``
        agent (one per partition in the group) dead-letters it once."""
        sample = decode_record(ProcessSample, value, "process", where)
        if isinstance(sample, DeadLetter):
            log.debug("skipped %s: %s", where, sample.reason)
            return
        with self.lock:
            letter = self.history.add(sample, datetime.now(UTC))
        if letter is None:
            self.samples += 1

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5.0)
