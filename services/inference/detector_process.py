"""A detector in a worker process of its own, so that the line's Python does not stall inference.

Python runs one thread at a time (the GIL). A detector thread gives the GIL up for every torch
operation and has to win it back after each, so every stretch of the line's own Python (claim
checks, records, the event loop) holds a detector thread up, and a core sits idle meanwhile. A
detector in its own process has its own GIL: its only Python is its own (what that was worth on
2 cores: docs/engine.md, "Measurements behind the code").

The worker holds its own copy of the inspectors (pickled to it when it starts). It takes a batch of
decoded frames and scores it with :func:`~services.steps.detect.detect_batch`, whose answer is a few
KB a frame. A batch that fails comes back as an error; a worker that dies (killed, out of memory)
fails its batch and is started again for the next one. :mod:`services.inference.process` is the
inference port over these workers.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import signal
import threading
import time
from collections.abc import Mapping, Sequence
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any, Final

import numpy as np

from services.inference.ports import InferenceError
from services.steps.detect import Detected, detect_batch
from services.vision.inspector import Inspector

log = logging.getLogger(__name__)

READY: Final = "ready"
STOPPED: Final = "stopped"
START_TIMEOUT_S: Final = 300.0  # importing torch and unpickling large models takes a while on a busy machine
STOP_TIMEOUT_S: Final = 10.0
IN_FLIGHT: Final = 2  # batches a line keeps sent to each worker: one being scored, the next waiting


class DetectorProcessError(InferenceError):
    """A worker could not start, or died while scoring a batch."""


class BatchFailed(InferenceError):
    """The worker could not score a batch; it goes on with the next one."""


def warm_up(inspector: Inspector, batch: int) -> None:
    """Score a blank batch once: a fresh process's first batch of a size sets up its kernels and
    buffers (the first batch takes about twice as long as the next), which would otherwise land on
    the line's first frames."""
    size = inspector.card.image_size
    images = [np.zeros((size, size, 3), np.uint8)] * batch
    detect_batch(inspector, images)


def _serve(
    conn: Connection, inspectors: Mapping[str, Inspector], torch_threads: int, warm_batch: int
) -> None:
    """The worker's loop: (recipe, images, sizes) in, ("ok", Detected) or ("error", reason) out; None
    stops."""
    import torch

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the line's to handle: it drains, then stops us
    torch.set_num_threads(torch_threads)
    for inspector in inspectors.values():
        warm_up(inspector, warm_batch)
    conn.send((READY, time.process_time()))
    while True:
        try:
            job = conn.recv()
        except EOFError:  # the line's process is gone
            return
        if job is None:
            conn.send((STOPPED, time.process_time()))
            return
        recipe, images, sizes = job
        try:
            reply: tuple[str, Any] = ("ok", detect_batch(inspectors[recipe], images, sizes))
        except Exception as err:  # a worker never dies on one batch
            reply = ("error", f"{type(err).__name__}: {err}")
        conn.send(reply)


class DetectorProcess:
    """One worker process and the pipe to it.

    Several threads may call :meth:`detect` at once (the line keeps ``IN_FLIGHT`` batches sent to each
    worker): their batches queue in the pipe and their answers come back in the order they were sent.
    The worker then starts on the next batch the moment it has sent one back, instead of sitting idle
    until its caller has dealt with the answer and handed it the next.
    """

    def __init__(
        self, inspectors: Mapping[str, Inspector], torch_threads: int, name: str, warm_batch: int = 1
    ) -> None:
        self.inspectors, self.torch_threads, self.name = dict(inspectors), torch_threads, name
        self.warm_batch = warm_batch  # the batch size the worker warms up with (the line's largest)
        # spawned, not forked: forking a process whose torch threads are running is unsafe
        self._context = multiprocessing.get_context("spawn")
        self._process: BaseProcess | None = None
        self._conn: Connection | None = None
        self._stop_sent = False
        # Batches are sent one at a time under _send_lock (a worker is started under it too); answers
        # are read under _turn, in the order of the batches. _life counts the worker's starts, so that
        # a caller whose worker died learns it from the new one; _dead marks a worker seen to die.
        self._send_lock = threading.Lock()
        self._turn = threading.Condition()
        self._life = self._sent = self._received = 0
        self._dead = False
        self.restarts = 0
        # CPU seconds the worker took to start (imports, models, warm-up) and then used scoring,
        # over all its starts; the second is known once it has stopped (see close)
        self.startup_cpu_s = self.run_cpu_s = self._ready_cpu_s = 0.0

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def in_flight(self) -> int:
        """Batches sent to the worker and not answered yet (read without waiting for the caller that
        is reading an answer)."""
        return 0 if self._dead else self._sent - self._received

    def start(self) -> None:
        """Start the worker and wait until it has loaded the inspectors; raises DetectorProcessError."""
        ours, theirs = self._context.Pipe()
        process = self._context.Process(
            target=_serve,
            args=(theirs, self.inspectors, self.torch_threads, self.warm_batch),
            name=self.name,
            daemon=True,
        )
        process.start()
        theirs.close()  # the worker holds its end: when it dies, reading ours ends instead of waiting forever
        with self._turn:
            self._process, self._conn, self._stop_sent = process, ours, False
            self._life, self._sent, self._received, self._dead = self._life + 1, 0, 0, False
            self._turn.notify_all()  # callers still waiting on the last worker: it is gone
        try:
            message = ours.recv() if ours.poll(START_TIMEOUT_S) else None
        except (EOFError, OSError) as err:
            exit_code = self._reap()
            raise DetectorProcessError(
                f"detector process {self.name} exited while starting (exit code {exit_code})"
            ) from err
        if not (isinstance(message, tuple) and message[0] == READY):  # (poll timed out)
            process.kill()
            self._reap()
            raise DetectorProcessError(
                f"detector process {self.name} did not start in {START_TIMEOUT_S:.0f} s"
            )
        self.startup_cpu_s += message[1]
        self._ready_cpu_s = message[1]

    def detect(
        self, recipe: str, images: Sequence[np.ndarray], sizes: Sequence[tuple[int, int]] | None = None
    ) -> Detected:
        """Score one recipe's batch in the worker (see :func:`~services.steps.detect.detect_batch`).

        Raises BatchFailed when the worker could not score it, DetectorProcessError when the worker
        died with the batch sent to it (it is started again for the next batch)."""
        with self._send_lock:
            if self._conn is None or self._dead:
                with self._turn:  # (no caller is still reading from the dead worker)
                    self._reap()
                self.start()
            conn, life, ticket = self._conn, self._life, self._sent
            assert conn is not None
            self._sent += 1
            try:
                conn.send((recipe, list(images), None if sizes is None else list(sizes)))
                broken: OSError | None = None
            except OSError as err:  # (a broken pipe: the worker is gone)
                broken = err
        if broken is not None:
            raise self._died(life) from broken
        with self._turn:
            self._turn.wait_for(lambda: self._life != life or self._dead or self._received == ticket)
            if self._life != life:  # it died under an earlier batch, with this one sent, and was restarted
                raise DetectorProcessError(f"detector process {self.name} died while scoring the batch")
            if self._dead:  # the same, not restarted yet
                raise self._died(life)
            try:
                status, payload = conn.recv()
            except (EOFError, OSError) as err:  # the worker died under this batch
                raise self._died(life) from err
            self._received += 1
            self._turn.notify_all()
        if status != "ok":
            raise BatchFailed(str(payload))
        detected: Detected = payload
        return detected

    def _died(self, life: int) -> DetectorProcessError:
        """Mark the worker of ``life`` dead (the next batch starts it again) and wake the callers
        waiting on it; the error to raise."""
        with self._turn:
            process = self._process if self._life == life else None
            if process is not None:
                process.join(1.0)  # its end of the pipe is closed: it is exiting
            exit_code = process.exitcode if process is not None else None
            if self._life == life and not self._dead:
                self._dead = True
                self.restarts += 1
                log.error("detector process %s died (exit code %s); starting it again", self.name, exit_code)
                self._turn.notify_all()
        return DetectorProcessError(
            f"detector process {self.name} died while scoring the batch (exit code {exit_code})"
        )

    def _reap(self) -> int | None:
        """Wait for the worker to exit (killing it after STOP_TIMEOUT_S) and forget it; its exit code."""
        process, conn = self._process, self._conn
        self._process = self._conn = None
        if conn is not None:
            conn.close()
        if process is None:
            return None
        process.join(STOP_TIMEOUT_S)
        if process.is_alive():
            log.warning("detector process %s did not exit; killing it", self.name)
            process.kill()
            process.join(STOP_TIMEOUT_S)
        return process.exitcode

    def ask_to_stop(self) -> None:
        """Tell the worker to exit once it has sent back the batches sent to it; :meth:`close` waits.

        When a caller cannot finish sending a batch within STOP_TIMEOUT_S (a hung worker), nothing is
        sent: :meth:`close` then kills the worker."""
        if not self._send_lock.acquire(timeout=STOP_TIMEOUT_S):
            return
        try:
            if self._conn is not None and not self._stop_sent:
                self._stop_sent = True
                with contextlib.suppress(OSError):  # already gone
                    self._conn.send(None)
        finally:
            self._send_lock.release()

    def _count_run_cpu(self) -> None:
        """Add what the worker says it used after starting (it answers the stop with its CPU time)."""
        deadline = time.monotonic() + STOP_TIMEOUT_S
        if not self._turn.acquire(timeout=STOP_TIMEOUT_S):  # a caller still waits for an answer
            return
        try:
            conn = self._conn
            while conn is not None and (left := deadline - time.monotonic()) > 0 and conn.poll(left):
                message = conn.recv()  # (a batch's answer nobody waited for is passed over)
                if isinstance(message, tuple) and message[0] == STOPPED:
                    self.run_cpu_s += message[1] - self._ready_cpu_s
                    return
        except (EOFError, OSError):  # it died instead: its CPU time is lost to the count
            return
        finally:
            self._turn.release()

    def close(self) -> None:
        """Ask the worker to stop, wait for it, and kill it when it does not exit within a few seconds."""
        self.ask_to_stop()
        self._count_run_cpu()
        self._reap()
