"""The embedded runtime: one process runs the whole line, with bounded asyncio queues between steps.

    sources ─► ingest ─► decode + join ─► detect (batches) ─► store
               (checks,      (frame bytes,    (inspect_batch:     (upsert by frame_id,
               claim check)  as-of process)   defects, heat map)  retention)

Every queue is bounded, so a slow detector holds the sources back (back pressure) instead of
piling frames up in memory. Blocking work (reading sources, decoding, inference, the stores) runs in
worker threads, so the loop stays free to move frames along. :meth:`Line.stop` stops reading the
sources and lets every frame already read go through to the store (a graceful drain). Bad input
becomes a dead letter with a reason and the line goes on; a full disk stops the line cleanly.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import numpy as np

from schemas.dead_letter import DeadLetter
from schemas.frame import Frame
from schemas.inspection import Inspection
from schemas.process import ProcessSnapshot
from services.ingest.ports import CapturedFrame, FrameSource, ProcessSource
from services.storage.errors import BlobStoreFull
from services.storage.ports import BlobStore, RecordStore
from services.stream.admission import admission_check, claim_check
from services.stream.metrics import LineMetrics
from services.stream.process_feed import ProcessFeed
from services.stream.process_join import ProcessHistory, check_capture_time
from services.stream.rejects import reason_code, reject
from services.stream.steps import decode, elapsed_ms, inspect_batch
from services.stream.summary import LineSummary
from services.vision.images import DEFAULT_MAX_MEGAPIXELS
from services.vision.inspector import Inspector

log = logging.getLogger(__name__)

MIB: Final = 1024 * 1024
END: Final = None  # put on a queue after the last item
BATCH_STEPS: Final = ("preprocess", "infer")


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

    def __post_init__(self) -> None:
        if self.max_batch < 1 or self.queue_size < 1:  # a queue of size 0 would be unbounded
            raise ValueError(
                f"max_batch and queue_size must be at least 1, got {self.max_batch}, {self.queue_size}"
            )
        if self.max_wait_ms < 0 or self.max_frame_bytes < 1:
            raise ValueError("max_wait_ms must be >= 0 and max_frame_bytes >= 1")


@dataclass(eq=False)
class InFlight:
    """A frame on its way through the line."""

    frame: Frame
    entered: float  # time.perf_counter() when it was read off its source
    data: bytes | None = None  # encoded bytes, until decoded
    image: np.ndarray | None = None
    process: ProcessSnapshot | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)


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

    async def run(self) -> LineSummary:
        """Run until the sources end or :meth:`stop` is called and every frame read is dealt with."""
        self._loop = asyncio.get_running_loop()
        size = self.options.queue_size
        to_decode: asyncio.Queue[InFlight | None] = asyncio.Queue(size)
        to_detect: asyncio.Queue[InFlight | None] = asyncio.Queue(size)
        to_store: asyncio.Queue[tuple[InFlight, Inspection] | None] = asyncio.Queue(size)
        for name, queue in (("decode", to_decode), ("detect", to_detect), ("store", to_store)):
            self.metrics.watch_queue(name, queue)
        feed = ProcessFeed(self.process_sources, self.history, self._dead_letter, self._sample_joined)
        started, self.running = time.perf_counter(), True
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._ingest_all(to_decode))
                tasks.create_task(self._decode_and_join(to_decode, to_detect, feed))
                tasks.create_task(self._detect(to_detect, to_store))
                tasks.create_task(self._store(to_store))
        finally:
            feed.close()
            self.running = False
            self.summary.wall_s = time.perf_counter() - started
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
                    captured = await asyncio.to_thread(next, frames, None)
                except Exception as err:  # a broken source ends; the frames already read still go through
                    log.exception("frame source %s failed and is closed", source.name)
                    self.stop(f"frame source {source.name} failed: {type(err).__name__}: {err}")
                    return
                if captured is None:
                    return
                self.summary.frames_in += 1
                if isinstance(captured, DeadLetter):
                    await self._dead_letter(captured, frame=True)
                    continue
                self.metrics.frames_in.labels(captured.camera_id).inc()
                item = await self._admit(captured)
                if isinstance(item, DeadLetter):
                    await self._dead_letter(item, frame=True)
                elif item is not None:
                    await out.put(item)  # waits while the line is full: back pressure on the source
        finally:
            source.close()

    async def _admit(self, captured: CapturedFrame) -> InFlight | DeadLetter | None:
        """Check a frame and store its bytes (the claim check); None when it is already stored."""
        entered, opts = time.perf_counter(), self.options
        refused = admission_check(captured, opts.cameras, self.inspectors.keys())
        if refused is not None:
            return refused
        if opts.skip_stored and await asyncio.to_thread(self._already_stored, captured.frame_id):
            self.summary.skipped += 1
            return None
        try:
            frame = await asyncio.to_thread(claim_check, captured, self.blobs, opts.max_frame_bytes)
        except BlobStoreFull as err:
            log.error("blob store is full, stopping the line: %s", err)
            self.stop(f"blob store full: {err}")
            return reject("ingest", "blob_store_full", str(err), captured.source_ref, captured.frame_id)
        if isinstance(frame, DeadLetter):
            return frame
        future = check_capture_time(frame, datetime.now(UTC), opts.clock_skew_s)
        if future is not None:
            return future
        item = InFlight(frame, entered, data=captured.data, image=captured.image)
        item.timings_ms["ingest"] = elapsed_ms(entered)
        return item

    def _already_stored(self, frame_id: str) -> bool:
        return self.records.get_inspection(frame_id) is not None

    # ------------------------------------------------------------------------------- decode + join

    async def _decode_and_join(
        self, inbox: asyncio.Queue[InFlight | None], out: asyncio.Queue[InFlight | None], feed: ProcessFeed
    ) -> None:
        while (item := await inbox.get()) is not END:
            if item.image is None:
                assert item.data is not None
                start = time.perf_counter()
                image = await asyncio.to_thread(decode, item.frame, item.data, self.options.max_megapixels)
                item.timings_ms["decode"] = elapsed_ms(start)
                if isinstance(image, DeadLetter):
                    await self._dead_letter(image, frame=True)
                    continue
                item.image = image
            item.data = None
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
            try:
                item = inbox.get_nowait() if timeout <= 0 else await asyncio.wait_for(inbox.get(), timeout)
            except (asyncio.QueueEmpty, TimeoutError):
                break
            if item is END:
                return batch, True
            batch.append(item)
        return batch, False

    async def _detect(
        self, inbox: asyncio.Queue[InFlight | None], out: asyncio.Queue[tuple[InFlight, Inspection] | None]
    ) -> None:
        ended = False
        while not ended:
            batch, ended = await self._next_batch(inbox)
            by_recipe: dict[str, list[InFlight]] = {}
            for item in batch:
                by_recipe.setdefault(item.frame.recipe, []).append(item)
            for recipe, items in by_recipe.items():
                for item, inspection in zip(items, await self._inspect(recipe, items), strict=False):
                    await out.put((item, inspection))
        await out.put(END)

    async def _inspect(self, recipe: str, items: list[InFlight]) -> list[Inspection]:
        """The records of one recipe's frames; on failure every frame is dead-lettered and [] returned."""
        frames = [item.frame for item in items]
        images: list[Any] = [item.image for item in items]
        process = [item.process or ProcessSnapshot(status="missing") for item in items]
        timings = [item.timings_ms for item in items]
        try:
            inspections = await asyncio.to_thread(
                inspect_batch,
                self.inspectors[recipe],
                frames,
                images,
                self.blobs,
                process,
                timings_ms=timings,
            )
        except BlobStoreFull as err:
            log.error("blob store is full, stopping the line: %s", err)
            self.stop(f"blob store full: {err}")
            code, detail = "blob_store_full", str(err)
        except Exception as err:  # a worker never dies on one batch; the frames are kept as dead letters
            log.exception("inspecting a batch of %d frames failed", len(items))
            code, detail = "inspect_error", f"{type(err).__name__}: {err}"
        else:
            self.metrics.batch_size.observe(len(items))
            for step in BATCH_STEPS:
                self.metrics.step_seconds.labels(step).observe(
                    inspections[0].timings_ms.get(step, 0.0) / 1000
                )
            return inspections
        for frame in frames:
            await self._dead_letter(
                reject("inspect", code, detail, frame.image.uri, frame.frame_id), frame=True
            )
        return []

    # -------------------------------------------------------------------------------------- store

    async def _store(self, inbox: asyncio.Queue[tuple[InFlight, Inspection] | None]) -> None:
        while (pair := await inbox.get()) is not END:
            item, inspection = pair
            start = time.perf_counter()
            try:
                await asyncio.to_thread(self.records.upsert_inspection, inspection)
            except Exception as err:  # e.g. the disk under the record store is full: nothing was written
                log.error(
                    "storing the record of frame %s failed, stopping the line: %s", inspection.frame_id, err
                )
                self.stop(f"record store failed: {type(err).__name__}: {err}")
                letter = reject("store", "store_error", str(err), item.frame.image.uri, item.frame.frame_id)
                await self._dead_letter(letter, frame=True)
                continue
            heatmap_uri = inspection.heatmap.uri if inspection.heatmap else None
            if not self.options.keep_frames and item.frame.image.uri != heatmap_uri:
                # (a heat map with nothing warm on it is the frame itself: the same bytes, one blob)
                await asyncio.to_thread(self._delete_frame, item.frame)
            self._stored(item, inspection, elapsed_ms(start))

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
            await asyncio.to_thread(self.records.add_dead_letter, letter)
        except Exception as err:  # the record store itself may be what failed
            log.error("could not store the dead letter (%s): %s", letter.reason, err)

    def _sample_joined(self) -> None:
        self.summary.process_samples += 1
        self.metrics.process_samples.inc()
