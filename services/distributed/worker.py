"""The Faust worker: agents over linewatch's topics, each a loop over the steps of ``services/steps``.

- **process history** (``process`` topic): every worker holds every line's recent samples, read by
  a thread of its own from every partition of the topic (``process_reader.py``); a restarted
  worker reads them back from the topic before it takes frames. The ``process`` agent only
  dead-letters what is not a sample.
- **inspect** (``frames`` topic, one message at a time): load (the frame's bytes from the blob store,
  decoded), join (as of the history; a batch waits up to ``late_process_s`` for samples taken after
  its frames), detect (the inference port; a batch waits while its server is away), finish (defects,
  heat maps into the blob store, made durable),
  then every ``Inspection`` published to ``inspections`` and confirmed by the broker.
- **sink** (``inspections``): the records stored in the record store, idempotent by ``frame_id``.
- **dead letters** (``dead-letters``): stored in the record store.

Offsets are committed only for messages whose agent has finished with them (a batch of frames is
acknowledged once its records are stored and confirmed on ``inspections``): delivery is at least
once, and the sinks are idempotent, so a worker killed at any point and started again leaves one
record per frame. A message that is not a record, a frame that cannot be loaded or scored, a store
that fails: each becomes a dead letter or is retried; an agent never dies on one record.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from schemas.dead_letter import DeadLetter, reject
from schemas.frame import Frame
from schemas.inspection import Inspection
from schemas.process import ProcessSample
from services.analytics.alerting import Alerting
from services.analytics.clustering import PeriodicClustering
from services.distributed.codec import decode_record, encode, frame_key, line_key
from services.inference.ports import detect_when_served
from services.steps.admit import Admitted, frame_size, load_frame
from services.steps.finish import finish_batch
from services.steps.join import future_timestamp
from services.steps.store import store_group
from services.storage.errors import RecordStoreUnavailable

if TYPE_CHECKING:
    import faust

    from services.config import LinewatchSettings
    from services.distributed.process_reader import ProcessReader
    from services.inference.thread import InferenceThread
    from services.storage.ports import BlobStore, RecordStore

log = logging.getLogger(__name__)

STORE_RETRY_S = (0.5, 1.0, 2.0, 5.0)  # waits between tries of a store that failed, then dead letters


class Resources:
    """The stores and the inference port of one worker; :meth:`start` before the Faust worker
    starts, so that the agents never wait for a model (a stream that starts late loses messages
    that reached it meanwhile)."""

    def __init__(
        self,
        records: RecordStore,
        blobs: BlobStore,
        inference: InferenceThread,
        reader: ProcessReader,
        sink: RecordStore | None = None,
        alerting: Alerting | None = None,
        clustering: PeriodicClustering | None = None,
    ) -> None:
        self.records, self.blobs, self.inference, self.sink = records, blobs, inference, sink
        self.reader = reader
        self.alerting = alerting  # drift monitors of the cameras whose partitions this worker holds
        self.clustering = clustering  # defect clustering over the shared store, run by the leader

    def start(self) -> None:
        """Start the inference port (load the models, start detector processes, warm up) and read
        the process history back from its topic."""
        self.inference.start_in_thread()
        self.reader.start()
        log.info("process history: %d samples read back from %s", self.reader.samples, self.reader.topic)

    def close(self) -> None:
        if self.alerting is not None:
            self.alerting.close()
        self.reader.close()
        self.inference.close_thread()
        self.records.close()
        self.blobs.close()
        if self.sink is not None:
            self.sink.close()


async def one_by_one(stream: Any) -> AsyncIterator[list[Any]]:
    """Each event of ``stream`` as a batch of one, acknowledged once the caller has finished with it
    (asks for the next), so that its offset is committed only then.

    Faust's ``take``/``take_events`` and a reader task of our own over ``stream.noack()`` both lost
    messages now and then when a worker restarted on a backlog (offsets skipped, or a stream that
    stopped receiving); one event at a time, in the agent's own task, did not. Batching across
    frames is left to the inference port (see docs/decisions.md).
    """
    manual = stream.noack()
    async for event in manual.events():
        yield [event]
        await manual.ack(event)


def where(event: Any) -> str:
    message = event.message
    return f"{message.topic}[{message.partition}]@{message.offset}"


def build_app(settings: LinewatchSettings, resources: Resources, datadir: Path) -> faust.App:
    """The Faust app of a linewatch worker over ``resources``."""
    import faust

    kafka, topics = settings.kafka, settings.kafka.topics
    app = faust.App(
        kafka.app_id,
        broker=f"kafka://{kafka.bootstrap_servers.replace(',', ';kafka://')}",
        store="memory://",
        datadir=str(datadir),
        topic_replication_factor=kafka.replication_factor,
        topic_partitions=kafka.partitions,
        topic_allow_declare=False,  # created at start with the configured partitions (ensure_topics)
        broker_session_timeout=kafka.session_timeout_s,
        broker_heartbeat_interval=max(0.5, kafka.session_timeout_s / 6),
        producer_max_batch_size=16384 if kafka.producer_batch_records > 1 else 1,
        producer_compression_type=None if kafka.compression == "none" else kafka.compression,
        consumer_auto_offset_reset="earliest",
        web_enabled=False,
        table_standby_replicas=0,
        broker_credentials=_credentials(settings),
    )

    def raw_topic(name: str) -> Any:
        return app.topic(name, key_serializer="raw", value_serializer="raw")

    frames_topic = raw_topic(topics.frames)
    process_topic = raw_topic(topics.process)
    inspections_topic = raw_topic(topics.inspections)
    dead_topic = raw_topic(topics.dead_letters)
    alerts_topic = raw_topic(topics.alerts)
    reader = resources.reader
    skew_s = settings.process.clock_skew_s

    async def dead_letter(letter: DeadLetter) -> None:
        await (await dead_topic.send(key=(letter.frame_id or "").encode() or None, value=encode(letter)))

    @app.agent(process_topic)
    async def process(stream: Any) -> None:
        """Dead-letters what on the process topic is not a sample (once: one worker per partition);
        the samples themselves reach every worker's history through its reader."""
        async for event in stream.events():
            sample = decode_record(ProcessSample, event.value, "process", where(event))
            if isinstance(sample, DeadLetter):
                await dead_letter(sample)
            elif future_timestamp(sample.ts, datetime.now(UTC), skew_s):
                detail = f"sample ts {sample.ts.isoformat()} is ahead of the clock (allowed skew {skew_s} s)"
                await dead_letter(reject("process", "future_timestamp", detail, sample.model_dump_json()))

    async def wait_for_process(frames: Sequence[Frame]) -> None:
        """Let the frames wait, up to ``late_process_s``, until the table holds a sample of their line
        taken at or after each of them (a sample still on its way would be the one in force); then
        they are joined with what there is. A sample that comes later changes no stored record."""
        deadline = time.monotonic() + kafka.late_process_s
        for frame in frames:
            while time.monotonic() < deadline:
                latest = reader.latest(frame.line_id)
                if latest is not None and latest >= frame.captured_at:
                    break
                await asyncio.sleep(0.05)

    async def inspect_batch(frames: list[Frame], offsets: str) -> None:
        loaded: list[Admitted] = await asyncio.gather(
            *(asyncio.to_thread(load_frame, frame, resources.blobs) for frame in frames)
        )
        ready = []
        for admitted in loaded:
            if admitted.letter is not None:
                await dead_letter(admitted.letter)
            else:
                ready.append(admitted)
        await wait_for_process([a.frame for a in ready if a.frame is not None])
        by_recipe: dict[str, list[Admitted]] = {}
        for admitted in ready:
            assert admitted.frame is not None
            if admitted.frame.recipe not in resources.inference.recipes:
                models = ", ".join(sorted(resources.inference.recipes)) or "none"
                detail = (
                    f"no model for recipe {admitted.frame.recipe!r} on this worker (models for: {models})"
                )
                frame = admitted.frame
                await dead_letter(reject("inspect", "no_model", detail, frame.image.uri, frame.frame_id))
                continue
            by_recipe.setdefault(admitted.frame.recipe, []).append(admitted)
        for recipe, group in by_recipe.items():
            batch = [a.frame for a in group if a.frame is not None]
            try:
                images = [a.image for a in group if a.image is not None]
                detected = await detect_when_served(
                    resources.inference, recipe, images, [frame_size(f) for f in batch]
                )
                with reader.lock:
                    snapshots = [reader.history.snapshot(f.line_id, f.captured_at) for f in batch]
                timings = [a.timings_ms for a in group]
                records = await asyncio.to_thread(
                    finish_batch, batch, detected, resources.blobs, snapshots, timings_ms=timings
                )
            except Exception as err:  # a worker never dies on one batch: its frames are dead letters
                log.exception("inspecting a batch of %d frames failed", len(batch))
                for frame in batch:
                    detail = f"{type(err).__name__}: {err}"
                    await dead_letter(
                        reject("inspect", "inspect_error", detail, frame.image.uri, frame.frame_id)
                    )
                continue
            await store_with_retries(records, resources.records)  # stored before the frames are acked
            sent = [
                await inspections_topic.send(key=frame_key(r_frame), value=encode(record))
                for r_frame, record in zip(batch, records, strict=True)
            ]
            await asyncio.gather(*sent)  # and published for downstream consumers, confirmed
            if resources.alerting is not None:
                alerts = await asyncio.to_thread(resources.alerting.after_stored, records)
                for alert in alerts:  # stored by the monitor already; published for other consumers
                    await (await alerts_topic.send(key=line_key(alert.line_id), value=encode(alert)))
            log.info("inspected %d frames of %s (%s)", len(batch), recipe, offsets)

    @app.agent(frames_topic, concurrency=settings.kafka.concurrency)
    async def inspect(stream: Any) -> None:
        async for events in one_by_one(stream):
            frames = []
            for event in events:
                frame = decode_record(Frame, event.value, "ingest", where(event))
                if isinstance(frame, DeadLetter):
                    await dead_letter(frame)
                else:
                    frames.append(frame)
            if frames:
                await inspect_batch(frames, ", ".join(where(event) for event in events))

    async def store_with_retries(inspections: list[Inspection], store: RecordStore) -> None:
        """Store the records before their frames are acknowledged. A record the store refuses is
        tried a few times, then dead-lettered; while the store's server is away
        (RecordStoreUnavailable) the worker waits as long as it takes: back pressure, no loss."""
        pending = inspections
        tries = iter((*STORE_RETRY_S, None))
        while True:
            results = await asyncio.to_thread(store_group, store, resources.blobs, pending)
            failed = [(i, e) for i, (e, _) in zip(pending, results, strict=True) if e is not None]
            if not failed:
                return
            pending = [inspection for inspection, _ in failed]
            if all(isinstance(error, RecordStoreUnavailable) for _, error in failed):
                log.warning(
                    "the record store is unavailable (%s); %d records wait", failed[0][1], len(pending)
                )
                await asyncio.sleep(STORE_RETRY_S[-1])
                continue
            wait_s = next(tries)
            if wait_s is None:
                for inspection, error in failed:
                    uri = inspection.image.uri if inspection.image else "<none>"
                    await dead_letter(reject("store", "store_error", str(error), uri, inspection.frame_id))
                return
            log.warning(
                "storing %d records failed (%s); trying again in %.1f s", len(pending), failed[0][1], wait_s
            )
            await asyncio.sleep(wait_s)

    async def sink(stream: Any) -> None:
        """The ``inspections`` topic into a second record store (``kafka.sink_records``)."""
        assert resources.sink is not None
        async for events in one_by_one(stream):
            inspections = []
            for event in events:
                record = decode_record(Inspection, event.value, "store", where(event))
                if isinstance(record, DeadLetter):
                    await dead_letter(record)
                else:
                    inspections.append(record)
            if inspections:
                await store_with_retries(inspections, resources.sink)
                log.info("stored %d records (%s)", len(inspections), ", ".join(where(e) for e in events))

    if resources.sink is not None:
        app.agent(inspections_topic, name="sink")(sink)

    @app.agent(dead_topic)
    async def dead_letters(stream: Any) -> None:
        async for event in stream.events():
            letter = decode_record(DeadLetter, event.value, "dead_letter", where(event))  # or one about it
            for wait_s in (*STORE_RETRY_S, None):
                try:
                    await asyncio.to_thread(resources.records.add_dead_letter, letter)
                    break
                except Exception as err:  # the store may be down: wait for it, then give up loudly
                    if wait_s is None:
                        log.error("could not store a dead letter (%s): %s", letter.reason, err)
                        break
                    await asyncio.sleep(wait_s)

    clustering = resources.clustering
    if clustering is not None and clustering.settings.enabled:

        @app.timer(interval=clustering.settings.every_s, on_leader=True)
        async def cluster_defects() -> None:
            """The leader clusters the shared store's defects when enough new ones came in; its
            novel-cluster alerts are stored by the run and published here."""
            try:
                run = await asyncio.to_thread(clustering.run_if_new)
            except Exception:  # a failed run is tried again at the next tick
                log.exception("a clustering run failed")
                return
            if run is not None:
                log.info(
                    "clustered %d defects: %d clusters, %d novel",
                    run.defects,
                    len(run.clusters),
                    len(run.novel),
                )
                for alert in run.alerts:
                    await (await alerts_topic.send(key=line_key(alert.line_id), value=encode(alert)))

    return app


def _credentials(settings: LinewatchSettings) -> Any:
    kafka = settings.kafka
    if kafka.security_protocol == "PLAINTEXT":
        return None
    import ssl

    import faust

    context = None
    if kafka.security_protocol in ("SSL", "SASL_SSL"):
        context = ssl.create_default_context(cafile=str(kafka.ssl_cafile) if kafka.ssl_cafile else None)
    if kafka.sasl_mechanism:
        if kafka.sasl_mechanism == "PLAIN":
            return faust.SASLCredentials(
                username=kafka.sasl_username, password=kafka.sasl_password, ssl_context=context
            )
        return faust.SASLCredentials(
            username=kafka.sasl_username,
            password=kafka.sasl_password,
            mechanism=kafka.sasl_mechanism,
            ssl_context=context,
        )
    return faust.SSLCredentials(context)
