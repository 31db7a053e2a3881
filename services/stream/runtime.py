"""The embedded runtime: one process runs the whole line, with bounded asyncio queues between steps.

    sources ─► admit ───────────► join ──────────► detect (batches) ─► finish ───► store
               (checks, claim     (as-of process)   (the inference     (defects,    (a group of
               check, decode)                       port scores)       heat maps)   records)

Each stage calls a step of :mod:`services.steps`, the functions a Faust worker and the API call
too; what is the line's own is the queues between them. Every queue is bounded, so a slow detector
holds the sources back (back pressure) instead of piling frames up in memory. Blocking work
(reading sources, decoding, the stores) runs in worker threads, one call per frame, batch or group
of records, so the loop stays free to move frames along; the inference port is kept as many batches
as it scores at once, one batch's heat maps are stored while the next batch is detected, and the
records waiting are stored together. :meth:`Line.stop` stops reading the sources and lets every
frame already read go through to the store (a graceful drain). Bad input becomes a dead letter with
a reason and the line goes on; a full disk stops the line cleanly.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from schemas.dead_letter import DeadLetter, reason_code, reject
from schemas.frame import Frame
from schemas.inspection import Inspection
from schemas.process import ProcessSnapshot
from services.analytics.alerting import Alerting
from services.inference.ports import InferencePort, detect_when_served
from services.ingest.ports import CapturedFrame, FrameSource, ProcessSource
from services.steps.admit import AdmissionRules, admit, elapsed_ms, frame_size
from services.steps.detect import Detected
from services.steps.finish import MISSING_PROCESS, finish_batch
from services.steps.join import ProcessHistory, join_process
from services.steps.store import keep_dead_letter, store_group
from services.storage.errors import BlobStoreFull, RecordStoreUnavailable
from services.storage.ports import BlobStore, RecordStore
from services.stream.metrics import LineMetrics
from services.stream.options import LineOptions
from services.stream.process_feed import ProcessFeed
from services.stream.summary import LineSummary

if TYPE_CHECKING:
    from services.registry.live_shadow import LiveShadow

log = logging.getLogger(__name__)

END: Final = None  # put on a queue after the last item
BATCH_STEPS: Final = ("preprocess", "infer")
MAX_STORE_GROUP: Final = 64  # records stored in one go (one worker-thread call) at most
STORE_UNAVAILABLE_WAIT_S: Final = 2.0  # between tries while the record store's server is away

__all__ = ["Line", "LineOptions"]


@dataclass(eq=False)
class InFlight:
    """A frame on its way through the line."""

    frame: Frame
    entered: float  # time.perf_counter() when it was read off its source
    image: np.ndarray | None = None  # decoded RGB
    process: ProcessSnapshot | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)


@dataclass(eq=False)
class Taken:
    """What reading one frame off a source came to: a frame on its way, or a dead letter, or neither."""

    camera_id: str | None = None  # the frame's camera (None: the source gave a dead letter)
    item: InFlight | None = None
    letter: DeadLetter | None = None
    skipped: bool = False  # already stored (resume)
    full: BlobStoreFull | None = None  # the blob store is full: the line stops


@dataclass(eq=False)
class DetectedBatch:
    """Frames of one recipe scored together, on their way to becoming records."""

    recipe: str
    items: list[InFlight]
    detected: Detected


class Line:
    """One line: frame and process sources, an inference port (a model per recipe), the stores."""

    def __init__(
        self,
        frame_sources: Sequence[FrameSource],
        process_sources: Sequence[ProcessSource],
        inference: InferencePort,
        records: RecordStore,
        blobs: BlobStore,
        options: LineOptions | None = None,
        metrics: LineMetrics | None = None,
        alerting: Alerting | None = None,
        companions: Sequence[Callable[[], Coroutine[Any, Any, None]]] = (),
        shadow: LiveShadow | None = None,
    ) -> None:
        self.frame_sources, self.process_sources = list(frame_sources), list(process_sources)
        # run beside the line once its port has started (the registry follower)
        self.companions = list(companions)
        self.shadow = shadow  # a candidate scoring the same batches, never acted on (the registry's shadow)
        self.alerting = alerting  # drift monitors and alerts, fed every group of stored records
        self.inference, self.records, self.blobs = inference, records, blobs
        self.options = options or LineOptions()
        self.rules: AdmissionRules = self.options.admission(inference.recipes)
        self.metrics = metrics or LineMetrics()
        self.summary = LineSummary()
        self.history = ProcessHistory(self.options.max_process_age_s, self.options.clock_skew_s)
        self.running = False
        self._stopping = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    def stop(self, reason: str | None = None) -> None:
        """Stop reading the sources and drain; safe to call from any thread or a signal handler."""
        if reason and not self.summary.stopped_by:
            self.summary.stopped_by = reason
        if self._loop is None:
            self._stopping.set()
        elif not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stopping.set)

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def status(self) -> dict[str, Any]:
        """The line's state for ``/v1/status``."""
        summary = self.summary
        return {
            "running": self.running and not self.stopping,
            "frames_in": summary.frames_in,
            "inspected": summary.inspected,
            "ng": summary.ng,
            "dead_letters": dict(summary.dead_letters),
            "process_samples": summary.process_samples,
            "stopped_by": summary.stopped_by,
        }

    async def run(self) -> LineSummary:
        """Start the inference port, run until the sources end or :meth:`stop` is called and every
        frame read is dealt with, then close the port (and the alerting's webhooks)."""
        self._loop = asyncio.get_running_loop()
        size = self.options.queue_size
        to_join: asyncio.Queue[InFlight | None] = asyncio.Queue(size)
        to_detect: asyncio.Queue[InFlight | None] = asyncio.Queue(size)
        to_finish: asyncio.Queue[DetectedBatch | None] = asyncio.Queue(1)  # one scored batch waits
        to_store: asyncio.Queue[tuple[InFlight, Inspection] | None] = asyncio.Queue(size)
        queues: dict[str, asyncio.Queue[Any]] = {
            "join": to_join,
            "detect": to_detect,
            "finish": to_finish,
            "store": to_store,
        }
        for name, queue in queues.items():
            self.metrics.watch_queue(name, queue)
        feed = ProcessFeed(self.process_sources, self.history, self._dead_letter, self._sample_joined)
        started, self.running = time.perf_counter(), True
        companions: list[asyncio.Task[None]] = []
        try:
            await self.inference.start()
            self.summary.startup_s = time.perf_counter() - started
            started = time.perf_counter()
            companions.extend(asyncio.create_task(companion()) for companion in self.companions)
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._ingest_all(to_join))
                tasks.create_task(self._join(to_join, to_detect, feed))
                tasks.create_task(self._detect(to_detect, to_finish))
                tasks.create_task(self._finish(to_finish, to_store))
                tasks.create_task(self._store(to_store))
        finally:
            for task in companions:
                task.cancel()
            await asyncio.gather(*companions, return_exceptions=True)
            if self.shadow is not None:
                await self.shadow.close()
            feed.close()
            self.running = False
            self.summary.wall_s = time.perf_counter() - started  # (a worker takes a while to exit)
            await self.inference.close()
            if self.alerting is not None:
                await asyncio.to_thread(self.alerting.close)  # deliver the alerts still queued
        return self.summary

    # ------------------------------------------------------------------------------------ ingest

    async def _ingest_all(self, out: asyncio.Queue[InFlight | None]) -> None:
        await asyncio.gather(*(self._ingest(source, out) for source in self.frame_sources))
        await out.put(END)

    async def _ingest(self, source: FrameSource, out: asyncio.Queue[InFlight | None]) -> None:
        frames = iter(source.frames())
        try:
            while not self._stopping.is_set():
                try:
                    taken = await asyncio.to_thread(self._take, frames)
                except Exception as err:  # a broken source ends; the frames already read still go through
                    log.exception("frame source %s failed and is closed", source.name)
                    self.stop(f"frame source {source.name} failed: {type(err).__name__}: {err}")
                    return
                if taken is None:
                    return
                self.summary.frames_in += 1
                if taken.camera_id is not None:
                    self.metrics.frames_in.labels(taken.camera_id).inc()
                if taken.full is not None:
                    log.error("blob store is full, stopping the line: %s", taken.full)
                    self.stop(f"blob store full: {taken.full}")
                self.summary.skipped += taken.skipped
                if taken.letter is not None:
                    await self._dead_letter(taken.letter, frame=True)
                elif taken.item is not None:
                    await out.put(taken.item)  # waits while the line is full: back pressure on the source
        finally:
            source.close()

    def _take(self, frames: Iterator[CapturedFrame | DeadLetter]) -> Taken | None:
        """Read the next frame off a source and admit it (checks, claim check, decode), in one
        worker-thread call; None when the source has ended."""
        captured = next(frames, None)
        if captured is None:
            return None
        if isinstance(captured, DeadLetter):
            return Taken(letter=captured)
        entered = time.perf_counter()
        if self.options.skip_stored and self.records.get_inspection(captured.frame_id) is not None:
            return Taken(camera_id=captured.camera_id, skipped=True)
        admitted = admit(captured, self.rules, self.blobs)
        taken = Taken(camera_id=captured.camera_id, letter=admitted.letter, full=admitted.full)
        if admitted.frame is not None:
            taken.item = InFlight(admitted.frame, entered, admitted.image, timings_ms=admitted.timings_ms)
        return taken

    # -------------------------------------------------------------------------------------- join

    async def _join(
        self, inbox: asyncio.Queue[InFlight | None], out: asyncio.Queue[InFlight | None], feed: ProcessFeed
    ) -> None:
        while (item := await inbox.get()) is not END:
            start = time.perf_counter()
            await feed.advance_to(item.frame.captured_at)
            item.process = join_process(self.history, item.frame)
            item.timings_ms["join"] = elapsed_ms(start)
            await out.put(item)
        await out.put(END)

    # ------------------------------------------------------------------------------------- detect

    async def _next_batch(self, inbox: asyncio.Queue[InFlight | None]) -> tuple[list[InFlight], bool]:
        """Up to ``max_batch`` frames, waiting at most ``max_wait_ms`` after the first; True at the end."""
        first = await inbox.get()
        if first is END:
            return [], True
        batch = [first]
        deadline = time.monotonic() + self.options.max_wait_ms / 1000.0
        while len(batch) < self.options.max_batch:
            timeout = deadline - time.monotonic()
            if not inbox.empty():  # a frame already waiting is taken at once, without a timer
                item = inbox.get_nowait()
            elif timeout <= 0:
                break
            else:
                try:
                    item = await asyncio.wait_for(inbox.get(), timeout)
                except TimeoutError:
                    break
            if item is END:
                return batch, True
            batch.append(item)
        return batch, False

    async def _detect(
        self, inbox: asyncio.Queue[InFlight | None], out: asyncio.Queue[DetectedBatch | None]
    ) -> None:
        """Keep as many batches in detection as the inference port scores at once."""
        async with asyncio.TaskGroup() as detectors:
            for _ in range(max(1, self.inference.slots)):
                detectors.create_task(self._detect_batches(inbox, out))
        inbox.get_nowait()  # the end, put back by the last task to see it
        await out.put(END)

    async def _detect_batches(
        self, inbox: asyncio.Queue[InFlight | None], out: asyncio.Queue[DetectedBatch | None]
    ) -> None:
        """Take batches off ``inbox`` and have them scored until the end."""
        ended = False
        while not ended:
            batch, ended = await self._next_batch(inbox)
            by_recipe: dict[str, list[InFlight]] = {}
            for item in batch:
                by_recipe.setdefault(item.frame.recipe, []).append(item)
            for recipe, items in by_recipe.items():
                detected = await self._run_detector(recipe, items)
                if detected is not None:
                    await out.put(DetectedBatch(recipe, items, detected))
        inbox.put_nowait(END)  # (the end was taken off the queue: put it back for the other tasks)

    async def _run_detector(self, recipe: str, items: list[InFlight]) -> Detected | None:
        """One recipe's frames scored as a batch; on failure they are dead-lettered and None returned."""
        images: list[Any] = [item.image for item in items]
        try:
            sizes = [frame_size(i.frame) for i in items]
            detected = await detect_when_served(self.inference, recipe, images, sizes)
        except Exception as err:  # a worker never dies on one batch; the frames are kept as dead letters
            log.exception("detecting a batch of %d frames failed", len(items))
            await self._inspect_failed(items, "inspect_error", f"{type(err).__name__}: {err}")
            return None
        if self.shadow is not None:
            self.shadow.observe(recipe, [item.frame.frame_id for item in items], images, sizes, detected)
        self.metrics.batch_size.observe(len(items))
        for step in BATCH_STEPS:
            self.metrics.step_seconds.labels(step).observe(detected.timings_ms.get(step, 0.0) / 1000)
        for item in items:
            item.image = None  # the pixels are no longer needed: let them go while the records are made
        return detected

    # ------------------------------------------------------------------------------------- finish

    async def _finish(
        self,
        inbox: asyncio.Queue[DetectedBatch | None],
        out: asyncio.Queue[tuple[InFlight, Inspection] | None],
    ) -> None:
        while (job := await inbox.get()) is not END:
            for item, inspection in zip(job.items, await self._records(job), strict=False):
                await out.put((item, inspection))
        await out.put(END)

    async def _records(self, job: DetectedBatch) -> list[Inspection]:
        """The records of a detected batch; on failure every frame is dead-lettered and [] returned."""
        items = job.items
        try:
            return await asyncio.to_thread(
                finish_batch,
                [item.frame for item in items],
                job.detected,
                self.blobs,
                [item.process or MISSING_PROCESS for item in items],
                timings_ms=[item.timings_ms for item in items],
            )
        except BlobStoreFull as err:
            log.error("blob store is full, stopping the line: %s", err)
            self.stop(f"blob store full: {err}")
            await self._inspect_failed(items, "blob_store_full", str(err))
        except Exception as err:  # a worker never dies on one batch; the frames are kept as dead letters
            log.exception("finishing a batch of %d frames failed", len(items))
            await self._inspect_failed(items, "inspect_error", f"{type(err).__name__}: {err}")
        return []

    async def _inspect_failed(self, items: list[InFlight], code: str, detail: str) -> None:
        for item in items:
            frame = item.frame
            await self._dead_letter(
                reject("inspect", code, detail, frame.image.uri, frame.frame_id), frame=True
            )

    # -------------------------------------------------------------------------------------- store

    async def _store(self, inbox: asyncio.Queue[tuple[InFlight, Inspection] | None]) -> None:
        ended = False
        while not ended:
            group, ended = await self._next_group(inbox)
            if not group:
                continue
            results = await asyncio.to_thread(self._store_group, group)
            while any(isinstance(error, RecordStoreUnavailable) for error, _ in results):
                # the store's server is away: the records wait (and the line behind them), none is lost
                log.warning(
                    "the record store is unavailable (%s); %d records wait", results[0][0], len(group)
                )
                await asyncio.sleep(STORE_UNAVAILABLE_WAIT_S)
                results = await asyncio.to_thread(self._store_group, group)
            for (item, inspection), (error, store_ms) in zip(group, results, strict=True):
                if error is None:
                    self._stored(item, inspection, store_ms)
                    continue
                log.error(
                    "storing the record of frame %s failed, stopping the line: %s", inspection.frame_id, error
                )
                self.stop(f"record store failed: {type(error).__name__}: {error}")
                frame = item.frame
                letter = reject("store", "store_error", str(error), frame.image.uri, frame.frame_id)
                await self._dead_letter(letter, frame=True)
            if self.alerting is not None:
                stored = [
                    inspection
                    for (_, inspection), (error, _) in zip(group, results, strict=True)
                    if not error
                ]
                alerts = await asyncio.to_thread(self.alerting.after_stored, stored)
                self.summary.alerts += len(alerts)

    @staticmethod
    async def _next_group(
        inbox: asyncio.Queue[tuple[InFlight, Inspection] | None],
    ) -> tuple[list[tuple[InFlight, Inspection]], bool]:
        """The records waiting to be stored (at least one, at most MAX_STORE_GROUP); True at the end."""
        first = await inbox.get()
        if first is END:
            return [], True
        group = [first]
        while len(group) < MAX_STORE_GROUP and not inbox.empty():
            pair = inbox.get_nowait()
            if pair is END:
                return group, True
            group.append(pair)
        return group, False

    def _store_group(self, group: list[tuple[InFlight, Inspection]]) -> list[tuple[Exception | None, float]]:
        inspections = [inspection for _, inspection in group]
        return store_group(self.records, self.blobs, inspections, self.options.keep_frames)

    def _stored(self, item: InFlight, inspection: Inspection, store_ms: float) -> None:
        latency_s = time.perf_counter() - item.entered
        self.summary.inspected += 1
        self.summary.ng += inspection.verdict == "NG"
        self.summary.latencies_ms.append(latency_s * 1000.0)
        self.metrics.frames_out.labels(inspection.camera_id, inspection.verdict).inc()
        self.metrics.latency.observe(latency_s)
        per_frame = {k: v for k, v in inspection.timings_ms.items() if k not in BATCH_STEPS}
        self.metrics.observe_steps(per_frame | {"store": store_ms})

    # ------------------------------------------------------------------------------- dead letters

    async def _dead_letter(self, letter: DeadLetter, frame: bool = False) -> None:
        code = reason_code(letter)
        log.warning("dead letter from %s: %s (%s)", letter.source, letter.reason, letter.original_ref)
        self.summary.dead_letters[code] = self.summary.dead_letters.get(code, 0) + 1
        self.summary.frame_dead_letters += frame
        self.metrics.dead_letters.labels(letter.source, code).inc()
        try:
            await asyncio.to_thread(keep_dead_letter, self.records, self.blobs, letter, frame)
        except Exception as err:  # the record store itself may be what failed
            log.error("could not store the dead letter (%s): %s", letter.reason, err)

    def _sample_joined(self) -> None:
        self.summary.process_samples += 1
        self.metrics.process_samples.inc()
