"""The embedded runtime: one process runs the whole line, with bounded asyncio queues between steps.

    sources ─► ingest ──────────► join ──────────► detect (batches) ─► finish ───► store
               (checks, claim     (as-of process)   (preprocess, score:  (defects,    (upsert by
               check, decode)                       detector threads)    heat maps)   frame_id)

Every queue is bounded, so a slow detector holds the sources back (back pressure) instead of
piling frames up in memory. Blocking work (reading sources, decoding, inference, the stores) runs in
worker threads, one call per frame, batch or group of records, so the loop stays free to move frames
along; one batch's heat maps are stored while the next batch is detected, and the records waiting
are stored together. :meth:`Line.stop` stops
reading the sources and lets every frame already read go through to the store (a graceful drain).
Bad input becomes a dead letter with a reason and the line goes on; a full disk stops the line
cleanly.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import numpy as np
import torch

from schemas.dead_letter import DeadLetter
from schemas.frame import Frame
from schemas.inspection import Inspection
from schemas.process import ProcessSnapshot
from services.ingest.ports import CapturedFrame, FrameSource, ProcessSource
from services.storage.errors import BlobStoreFull
from services.storage.ports import BlobStore, RecordStore
from services.stream.admission import admission_check, claim_check
from services.stream.detector_process import IN_FLIGHT, DetectorProcess
from services.stream.metrics import LineMetrics
from services.stream.process_feed import ProcessFeed
from services.stream.process_join import ProcessHistory, check_capture_time
from services.stream.rejects import reason_code, reject
from services.stream.steps import (
    MISSING_PROCESS,
    Detected,
    decode,
    detect_batch,
    elapsed_ms,
    finish_batch,
)
from services.stream.summary import LineSummary
from services.vision.images import DEFAULT_MAX_MEGAPIXELS
from services.vision.inspector import Inspector

log = logging.getLogger(__name__)

MIB: Final = 1024 * 1024
END: Final = None  # put on a queue after the last item
BATCH_STEPS: Final = ("preprocess", "infer")
MAX_STORE_GROUP: Final = 64  # records stored in one go (one worker-thread call) at most


@dataclass(frozen=True)
class LineOptions:
    max_batch: int = 4  # frames per detector batch at most (on a CPU, larger batches only add latency)
    max_wait_ms: float = 50.0  # how long a batch waits to fill after its first frame
    queue_size: int = 4  # frames waiting before each step at most
    max_process_age_s: float = 5.0  # older process samples are joined as "stale"
    clock_skew_s: float = 2.0  # timestamps further ahead of the clock are dead-lettered
    keep_frames: bool = True  # False: delete the raw frame blob once its record is stored
    cameras: frozenset[str] | None = None  # when given, frames from other cameras are dead-lettered
    max_frame_bytes: int = 64 * MIB
    max_megapixels: float = DEFAULT_MAX_MEGAPIXELS
    skip_stored: bool = False  # resume: skip frames whose record is already stored
    # Batches scored at the same time, each by its own detector thread with ``detector_threads`` torch
    # threads. None: two detectors (one if torch has one thread), sharing the torch threads of the
    # caller. Two small thread teams keep the cores busier than one large one: each runs its serial
    # parts (Python, kNN, defects) while the other computes, and the line's own work interrupts a
    # team of one thread less than one of all threads.
    detectors: int | None = None
    detector_threads: int | None = None
    # Run each detector in a worker process of its own (services/stream/detector_process.py) instead
    # of a thread of this one: the line's own Python then no longer stalls inference. ``linewatch run``
    # and ``linewatch demo`` do; each worker holds a copy of the models and takes seconds to start.
    detector_processes: bool = False

    def __post_init__(self) -> None:
        if self.max_batch < 1 or self.queue_size < 1:  # a queue of size 0 would be unbounded
            raise ValueError(
                f"max_batch and queue_size must be at least 1, got {self.max_batch}, {self.queue_size}"
            )
        if (self.detectors is not None and self.detectors < 1) or (
            self.detector_threads is not None and self.detector_threads < 1
        ):
            raise ValueError(
                f"detectors and detector_threads must be at least 1, got {self.detectors}, "
                f"{self.detector_threads}"
            )
        if self.max_wait_ms < 0 or self.max_frame_bytes < 1:
            raise ValueError("max_wait_ms must be >= 0 and max_frame_bytes >= 1")


def detector_plan(options: LineOptions, torch_threads: int) -> tuple[int, int]:
    """How many detector threads the line runs, and how many torch threads each of them uses."""
    detectors = options.detectors or min(2, max(1, torch_threads))
    return detectors, options.detector_threads or max(1, torch_threads // detectors)


def set_torch_threads(threads: int) -> None:
    """Give the calling thread ``threads`` torch threads, whatever the default is set to later."""
    torch.get_num_threads()  # torch sets a thread's count to the default on its first use: do that now
    torch.set_num_threads(threads)


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
    """One line: frame and process sources, a detector per recipe, the stores, the options."""

    def __init__(
        self,
        frame_sources: Sequence[FrameSource],
        process_sources: Sequence[ProcessSource],
        inspectors: Mapping[str, Inspector],
        records: RecordStore,
        blobs: BlobStore,
        options: LineOptions | None = None,
        metrics: LineMetrics | None = None,
    ) -> None:
        self.frame_sources, self.process_sources = list(frame_sources), list(process_sources)
        self.inspectors, self.records, self.blobs = dict(inspectors), records, blobs
        self.options = options or LineOptions()
        self.metrics = metrics or LineMetrics()
        self.summary = LineSummary()
        self.history = ProcessHistory(self.options.max_process_age_s, self.options.clock_skew_s)
        self.running = False
        self._stopping = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._detectors: list[ThreadPoolExecutor] = []
        self._workers: list[DetectorProcess] = []  # with detector_processes: one per detector
        self._slots = 1  # batches scored at once by each detector

    def stop(self, reason: str | None = None) -> None:
        """Stop reading the sources and drain; safe to call from any thread or a signal handler."""
        if reason and not self.summary.stopped_by:
            self.summary.stopped_by = reason
        if self._loop is None:
            self._stopping.set()
        elif not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stopping.set)

    @property
    def detector_processes(self) -> list[DetectorProcess]:
        """The detectors' worker processes of the current or last run (none without detector_processes)."""
        return list(self._workers)

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    async def run(self) -> LineSummary:
        """Run until the sources end or :meth:`stop` is called and every frame read is dealt with."""
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
        # Each detector is one long-lived thread (one warm OpenMP team) that sets its own torch thread
        # count: OpenMP keeps the count per calling thread, so a fresh thread would not have the caller's.
        # With detector processes the thread only waits on its worker, which sets its own count.
        # A worker process is kept IN_FLIGHT batches, each waited on by a thread of its own.
        caller_threads = torch.get_num_threads()
        detectors, threads = detector_plan(self.options, caller_threads)
        self._slots = IN_FLIGHT if self.options.detector_processes else 1
        self._detectors = [
            ThreadPoolExecutor(self._slots, f"linewatch-detector-{i}", set_torch_threads, (threads,))
            for i in range(detectors)
        ]
        if self.options.detector_processes:
            self._workers = [
                DetectorProcess(self.inspectors, threads, f"linewatch-detector-{i}", self.options.max_batch)
                for i in range(detectors)
            ]
        try:
            await asyncio.gather(*(self._loop.run_in_executor(d, int) for d in self._detectors))
            torch.set_num_threads(caller_threads)  # (setting it in a detector thread set the default too)
            await asyncio.gather(*(asyncio.to_thread(worker.start) for worker in self._workers))
            self.summary.startup_s = time.perf_counter() - started
            started = time.perf_counter()
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._ingest_all(to_join))
                tasks.create_task(self._join(to_join, to_detect, feed))
                tasks.create_task(self._detect(to_detect, to_finish))
                tasks.create_task(self._finish(to_finish, to_store))
                tasks.create_task(self._store(to_store))
        finally:
            feed.close()
            for detector in self._detectors:
                detector.shutdown(wait=False, cancel_futures=True)
            self.running = False
            self.summary.wall_s = time.perf_counter() - started  # (a worker takes a while to exit)
            for worker in self._workers:
                worker.ask_to_stop()  # all at once: they exit side by side
            for worker in self._workers:
                worker.close()
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
        """Read the next frame off a source, check it, store its bytes (the claim check) and decode it,
        in one worker-thread call; None when the source has ended."""
        captured = next(frames, None)
        if captured is None:
            return None
        if isinstance(captured, DeadLetter):
            return Taken(letter=captured)
        entered, opts, taken = time.perf_counter(), self.options, Taken(camera_id=captured.camera_id)
        taken.letter = admission_check(captured, opts.cameras, self.inspectors.keys())
        if taken.letter is not None:
            return taken
        if opts.skip_stored and self.records.get_inspection(captured.frame_id) is not None:
            taken.skipped = True
            return taken
        try:
            frame = claim_check(captured, self.blobs, opts.max_frame_bytes)
        except BlobStoreFull as err:
            taken.full = err
            frame = reject("ingest", "blob_store_full", str(err), captured.source_ref, captured.frame_id)
        if isinstance(frame, DeadLetter):
            taken.letter = frame
            return taken
        taken.letter = check_capture_time(frame, datetime.now(UTC), opts.clock_skew_s)
        if taken.letter is not None:
            return taken
        item = InFlight(frame, entered, image=captured.image)
        item.timings_ms["ingest"] = elapsed_ms(entered)
        if item.image is None:
            assert captured.data is not None  # a captured frame holds one of the two
            start = time.perf_counter()
            image = decode(frame, captured.data, opts.max_megapixels)
            item.timings_ms["decode"] = elapsed_ms(start)
            if isinstance(image, DeadLetter):
                taken.letter = image
                return taken
            item.image = image
        taken.item = item
        return taken

    # -------------------------------------------------------------------------------------- join

    async def _join(
        self, inbox: asyncio.Queue[InFlight | None], out: asyncio.Queue[InFlight | None], feed: ProcessFeed
    ) -> None:
        while (item := await inbox.get()) is not END:
            start = time.perf_counter()
            await feed.advance_to(item.frame.captured_at)
            item.process = self.history.snapshot(item.frame.line_id, item.frame.captured_at)
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
        async with asyncio.TaskGroup() as detectors:
            for index in range(len(self._detectors)):
                for _ in range(self._slots):
                    detectors.create_task(self._detect_with(index, inbox, out))
        inbox.get_nowait()  # the end, put back by the last detector to see it
        await out.put(END)

    async def _detect_with(
        self,
        detector: int,
        inbox: asyncio.Queue[InFlight | None],
        out: asyncio.Queue[DetectedBatch | None],
    ) -> None:
        """Take batches off ``inbox`` and score them with detector number ``detector`` until the end."""
        ended = False
        while not ended:
            batch, ended = await self._next_batch(inbox)
            by_recipe: dict[str, list[InFlight]] = {}
            for item in batch:
                by_recipe.setdefault(item.frame.recipe, []).append(item)
            for recipe, items in by_recipe.items():
                detected = await self._run_detector(detector, recipe, items)
                if detected is not None:
                    await out.put(DetectedBatch(recipe, items, detected))
        inbox.put_nowait(END)  # (the end was taken off the queue: put it back for the other detectors)

    async def _run_detector(self, detector: int, recipe: str, items: list[InFlight]) -> Detected | None:
        """One recipe's frames scored as a batch; on failure they are dead-lettered and None returned."""
        images: list[Any] = [item.image for item in items]
        try:
            if self._workers:
                detect = functools.partial(self._workers[detector].detect, recipe, images)
            else:
                detect = functools.partial(detect_batch, self.inspectors[recipe], images)
            thread = self._detectors[detector]
            detected = await asyncio.get_running_loop().run_in_executor(thread, detect)
        except Exception as err:  # a worker never dies on one batch; the frames are kept as dead letters
            log.exception("detecting a batch of %d frames failed", len(items))
            await self._inspect_failed(items, "inspect_error", f"{type(err).__name__}: {err}")
            return None
        self.metrics.batch_size.observe(len(items))
        for step in BATCH_STEPS:
            self.metrics.step_seconds.labels(step).observe(detected.timings_ms.get(step, 0.0) / 1000)
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
        images: list[Any] = [item.image for item in items]  # every one decoded before detection
        try:
            return await asyncio.to_thread(
                finish_batch,
                self.inspectors[job.recipe],
                [item.frame for item in items],
                images,
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
        """Make the blobs durable, upsert the records (in a worker thread), then drop their frame blobs
        when frames are not kept.

        The records go in one transaction; when that fails they are tried one by one, so that only
        the ones that cannot be stored fail. Returns, for each record, the error that kept it from
        being stored (None when stored) and the milliseconds it took. A record that failed keeps its
        frame: the dead letter points at it.
        """
        start = time.perf_counter()
        try:
            self.blobs.sync()  # a group commit: one flush for every frame and heat map of the group
        except Exception as err:  # the disk refused: no record may point at blobs that are not durable
            return [(err, elapsed_ms(start))] * len(group)
        results: list[tuple[Exception | None, float]] = []
        start = time.perf_counter()
        try:
            self.records.upsert_inspections([inspection for _, inspection in group])
            results = [(None, elapsed_ms(start) / len(group))] * len(group)
        except Exception:  # find the records that cannot be stored
            log.warning("storing %d records together failed; storing them one by one", len(group))
            for _, inspection in group:
                start = time.perf_counter()
                try:
                    self.records.upsert_inspection(inspection)
                    results.append((None, elapsed_ms(start)))
                except Exception as err:  # e.g. the disk under the record store is full: nothing written
                    results.append((err, elapsed_ms(start)))
        if not self.options.keep_frames:
            for (item, _), (error, _) in zip(group, results, strict=True):
                if error is None:
                    self._delete_frame(item.frame)
        return results

    def _delete_frame(self, frame: Frame) -> None:
        try:
            self.blobs.delete(frame.image.uri)
        except OSError as err:
            log.warning("could not delete frame blob %s: %s", frame.image.uri, err)

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
            await asyncio.to_thread(self._keep_dead_letter, letter, frame)
        except Exception as err:  # the record store itself may be what failed
            log.error("could not store the dead letter (%s): %s", letter.reason, err)

    def _keep_dead_letter(self, letter: DeadLetter, frame: bool) -> None:
        if frame:  # the letter may point at the frame's blob: make it durable first
            try:
                self.blobs.sync()
            except Exception as err:
                log.error("could not make the blobs durable before a dead letter: %s", err)
        self.records.add_dead_letter(letter)

    def _sample_joined(self) -> None:
        self.summary.process_samples += 1
        self.metrics.process_samples.inc()
