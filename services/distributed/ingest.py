"""Producers: frames and process samples from sources (by URL) onto Kafka.

A frame is admitted here as on the embedded line (known line, camera and recipe, size, readable
header, capture time), its bytes go to the blob store (durable when the put returns), and only its
reference travels: a ``Frame`` record on the ``frames`` topic, keyed by line and camera so that one
camera's frames stay in order. A frame that is refused goes to the ``dead-letters`` topic. Process
samples go to ``process`` keyed by line.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

from schemas.dead_letter import DeadLetter
from schemas.process import ProcessSample
from services.distributed.codec import encode, frame_key, line_key
from services.distributed.producer import Publisher
from services.ingest.ports import FrameSource, ProcessSource
from services.steps.admit import AdmissionRules, claim
from services.storage.ports import BlobStore

log = logging.getLogger(__name__)


@dataclass
class IngestSummary:
    published: int = 0
    dead_letters: dict[str, int] = field(default_factory=dict)
    failed_sources: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def letter(self, letter: DeadLetter) -> None:
        code = letter.reason.partition(":")[0]
        with self._lock:
            self.dead_letters[code] = self.dead_letters.get(code, 0) + 1

    def count(self) -> None:
        with self._lock:
            self.published += 1


def _publish_letter(publisher: Publisher, topic: str, letter: DeadLetter, summary: IngestSummary) -> None:
    log.warning("dead letter from %s: %s (%s)", letter.source, letter.reason, letter.original_ref)
    publisher.publish(topic, (letter.frame_id or "").encode() or None, encode(letter))
    summary.letter(letter)


def publish_frames(
    sources: Sequence[FrameSource],
    rules: AdmissionRules,
    blobs: BlobStore,
    publisher: Publisher,
    frames_topic: str,
    dead_letters_topic: str,
    stop: threading.Event | None = None,
) -> IngestSummary:
    """Admit every frame of the sources (one thread each) and publish it; until they end or ``stop``."""
    summary, stop = IngestSummary(), stop or threading.Event()

    def run(source: FrameSource) -> None:
        try:
            for captured in source.frames():
                claimed = claim(captured, rules, blobs)
                if claimed.frame is not None:
                    publisher.publish(frames_topic, frame_key(claimed.frame), encode(claimed.frame))
                    summary.count()
                elif claimed.letter is not None:
                    _publish_letter(publisher, dead_letters_topic, claimed.letter, summary)
                if claimed.full is not None:
                    log.error("blob store is full, stopping: %s", claimed.full)
                    stop.set()
                if stop.is_set():
                    return
        except Exception as err:  # a broken source ends; what it gave is published
            log.exception("frame source %s failed and is closed", source.name)
            summary.failed_sources.append(f"{source.name}: {type(err).__name__}: {err}")
        finally:
            source.close()

    _run_all([threading.Thread(target=run, args=(s,), name=f"ingest-{s.name}") for s in sources])
    return summary


def publish_process(
    sources: Sequence[ProcessSource],
    publisher: Publisher,
    process_topic: str,
    dead_letters_topic: str,
    stop: threading.Event | None = None,
) -> IngestSummary:
    """Publish every sample of the sources (one thread each); until they end or ``stop``."""
    summary, stop = IngestSummary(), stop or threading.Event()

    def run(source: ProcessSource) -> None:
        try:
            for sample in source.samples():
                if isinstance(sample, ProcessSample):
                    publisher.publish(process_topic, line_key(sample.line_id), encode(sample))
                    summary.count()
                else:
                    _publish_letter(publisher, dead_letters_topic, sample, summary)
                if stop.is_set():
                    return
        except Exception as err:
            log.exception("process source %s failed and is closed", source.name)
            summary.failed_sources.append(f"{source.name}: {type(err).__name__}: {err}")
        finally:
            source.close()

    _run_all([threading.Thread(target=run, args=(s,), name=f"ingest-{s.name}") for s in sources])
    return summary


def _run_all(threads: list[threading.Thread]) -> None:
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
