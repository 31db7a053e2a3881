"""Detectors in worker processes: the same results as in this process, and faults that cost one batch.

Real spawned processes with the real detector trained on the synthetic line; nothing is mocked.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from services.cli import main
from services.inference.detector_process import (
    IN_FLIGHT,
    BatchFailed,
    DetectorProcess,
    DetectorProcessError,
)
from services.inference.process import ProcessInference
from services.ingest.simulator_source import SimulatorSource
from services.ingest.synthetic import SyntheticLine
from services.ingest.synthetic_source import SyntheticSource
from services.steps.detect import detect_batch
from services.storage.sqlite_record_store import SqliteRecordStore
from services.storage.tiered_blob_store import TieredBlobStore
from services.stream.runtime import Line, LineOptions
from services.vision.inspector import Inspector
from tests.stream.test_restart import write_config

pytestmark = pytest.mark.integration

RECIPE = "housing-A"


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    return [part.image for part in SyntheticLine(seed=4).parts(6)]  # parts 1 and 5 are defective


@pytest.fixture(scope="module")
def worker(inspector: Inspector) -> Iterator[DetectorProcess]:
    process = DetectorProcess({RECIPE: inspector}, torch_threads=1, name="test-detector", warm_batch=2)
    process.start()
    yield process
    process.close()


def test_a_worker_scores_as_this_process_does(
    worker: DetectorProcess, inspector: Inspector, frames: list[np.ndarray]
) -> None:
    remote = worker.detect(RECIPE, frames)
    local = detect_batch(inspector, frames)
    assert worker.pid is not None and worker.pid != os.getpid()
    assert [p.verdict for p in remote.predictions] == [p.verdict for p in local.predictions]
    assert "NG" in [p.verdict for p in remote.predictions]  # (the batch holds defective parts)
    for theirs, ours in zip(remote.predictions, local.predictions, strict=True):
        assert theirs.score == pytest.approx(ours.score, abs=1e-5)
        assert [d.bbox for d in theirs.defects] == [d.bbox for d in ours.defects]
        np.testing.assert_allclose(theirs.embedding, ours.embedding, atol=1e-5)
        assert theirs.anomaly_map.size == 0  # the map stays in the worker: the heat map stands in
    assert len(remote.heatmaps) == len(frames)
    for theirs_levels, ours_levels in zip(remote.heatmaps, local.heatmaps, strict=True):
        assert theirs_levels.shape == ours_levels.shape and theirs_levels.dtype == np.uint8
        # the same heat map, up to rounding (one torch thread there, the test's threads here)
        assert np.abs(theirs_levels.astype(int) - ours_levels.astype(int)).max() <= 1
    assert set(remote.timings_ms) == {"preprocess", "infer"}


def test_batches_sent_at_once_come_back_to_their_own_callers(
    worker: DetectorProcess, inspector: Inspector, frames: list[np.ndarray]
) -> None:
    """Threads send batches of different sizes at once; each gets its own batch's predictions."""
    batches = [frames[:1], frames[1:3], frames[3:6], frames[:2], frames[2:5]]
    with ThreadPoolExecutor(len(batches)) as threads:
        answers = list(threads.map(lambda batch: worker.detect(RECIPE, batch), batches))
    for batch, answer in zip(batches, answers, strict=True):
        expected = detect_batch(inspector, batch).predictions
        assert [p.score for p in answer.predictions] == pytest.approx([p.score for p in expected], abs=1e-5)
    assert worker.in_flight == 0


def test_a_worker_killed_with_two_batches_sent_fails_both_and_starts_once(
    inspector: Inspector, frames: list[np.ndarray]
) -> None:
    process = DetectorProcess({RECIPE: inspector}, torch_threads=1, name="test-killed-two")
    process.start()
    try:
        first = process.pid
        assert first is not None
        with ThreadPoolExecutor(2) as threads:
            sent = [threads.submit(process.detect, RECIPE, frames * 4) for _ in range(2)]
            deadline = time.monotonic() + 30
            while process.in_flight < 2 and time.monotonic() < deadline:
                time.sleep(0.001)
            assert process.in_flight == 2  # (the first batch of 24 frames takes the worker ~0.5 s)
            os.kill(first, signal.SIGKILL)
            for future in sent:
                with pytest.raises(DetectorProcessError, match="died while scoring the batch"):
                    future.result()
        assert process.restarts == 1
        assert len(process.detect(RECIPE, frames[:2]).predictions) == 2  # started again, once
        assert process.pid not in (None, first) and process.restarts == 1
    finally:
        process.close()


def test_a_batch_the_worker_cannot_score_fails_alone(
    worker: DetectorProcess, frames: list[np.ndarray]
) -> None:
    pid = worker.pid
    with pytest.raises(BatchFailed, match="KeyError"):
        worker.detect("no-such-recipe", frames[:1])
    with pytest.raises(BatchFailed):
        worker.detect(RECIPE, [np.zeros((4, 4), np.float64)])  # not an RGB frame
    assert len(worker.detect(RECIPE, frames[:2]).predictions) == 2
    assert worker.pid == pid  # the same worker went on


def test_a_killed_worker_fails_its_batch_and_is_started_again(
    inspector: Inspector, frames: list[np.ndarray]
) -> None:
    process = DetectorProcess({RECIPE: inspector}, torch_threads=1, name="test-killed")
    process.start()
    try:
        first = process.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        with pytest.raises(DetectorProcessError, match=r"died while scoring the batch \(exit code -9\)"):
            process.detect(RECIPE, frames[:2])
        assert len(process.detect(RECIPE, frames[:2]).predictions) == 2  # started again
        assert process.pid not in (None, first) and process.restarts == 1
    finally:
        process.close()
    assert process.pid is None


def test_a_worker_that_cannot_start_says_so(inspector: Inspector) -> None:
    process = DetectorProcess({RECIPE: inspector}, torch_threads=0, name="test-broken")  # torch refuses 0
    with pytest.raises(DetectorProcessError, match="exited while starting"):
        process.start()
    assert process.pid is None


def test_the_line_with_detector_processes_loses_only_the_batches_a_killed_worker_held(
    inspector: Inspector, tmp_path: Path
) -> None:
    """A worker killed mid-run: the batches sent to it (IN_FLIGHT at most) are dead-lettered, every
    other frame is stored."""
    parts = 40
    records, blobs = SqliteRecordStore(tmp_path / "records.db"), TieredBlobStore.at(tmp_path / "blobs")
    machine = SyntheticLine(seed=4)
    line = Line(
        [SyntheticSource(seed=4, parts=parts)],
        [SimulatorSource(machine.process, machine.line_id, machine.machine_id)],
        ProcessInference({RECIPE: inspector}, detectors=2, threads=1, warm_batch=4),
        records,
        blobs,
        LineOptions(max_batch=4),
    )
    assert isinstance(line.inference, ProcessInference)
    workers = line.inference.workers
    killed: list[int] = []

    def kill_a_worker() -> None:
        deadline = time.monotonic() + 120
        while line.summary.inspected < 8 and time.monotonic() < deadline:
            time.sleep(0.01)
        pid = workers[0].pid
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    killer = threading.Thread(target=kill_a_worker)
    killer.start()
    try:
        summary = asyncio.run(line.run())
    finally:
        killer.join()
        records.close()
        blobs.close()
    assert killed, "the line ended before a worker could be killed"
    assert summary.frames_in == parts
    assert summary.inspected + summary.frame_dead_letters == parts  # nothing lost
    held = IN_FLIGHT * 4  # batches of 4
    assert set(summary.dead_letters) <= {"inspect_error"} and summary.frame_dead_letters <= held
    assert summary.inspected >= parts - held
    assert workers[0].restarts == (1 if summary.frame_dead_letters else 0)
    assert summary.startup_s > 0 and all(w.pid is None for w in workers)  # all stopped


def test_linewatch_run_says_when_a_detector_process_cannot_start(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The failure is stood in for (a worker that cannot start is hard to make on purpose from a
    config file); the command's handling of it is real."""

    def refuse(self: DetectorProcess) -> None:
        raise DetectorProcessError(f"detector process {self.name} exited while starting (exit code 1)")

    monkeypatch.setattr(DetectorProcess, "start", refuse)
    assert main(["run", "--config", str(write_config(tmp_path, model_dir))]) == 1
    error = capsys.readouterr().err
    assert "linewatch run: error: detector process linewatch-detector-0 exited while starting" in error
    assert "inference: local:// runs the detectors as threads" in error
