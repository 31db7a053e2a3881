"""Running a line from a command: Ctrl-C drains it, and the API and dashboard can serve beside it.

The first Ctrl-C (or SIGTERM) stops reading the sources and lets the frames already read reach the
store; a second one interrupts at once (every record stored so far is complete). uvicorn runs in
its own thread, so that it leaves the signals to the line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
import time
from typing import Any

from services.api.settings import ApiSettings
from services.storage.ports import BlobStore, RecordStore
from services.stream.runtime import Line
from services.stream.summary import LineSummary
from services.vision.inspector import Inspector

log = logging.getLogger(__name__)


class ApiServerError(RuntimeError):
    """The API cannot serve: its settings were refused, or it could not start listening."""


class ApiServer:
    """The HTTP API and dashboard over the line's stores, served by uvicorn in a daemon thread."""

    def __init__(
        self,
        settings: ApiSettings,
        line: Line,
        records: RecordStore,
        blobs: BlobStore,
        inspector: Inspector | None = None,
    ) -> None:
        import uvicorn

        from services.api.app import create_app

        self.line = line
        try:
            app = create_app(settings, records, blobs, inspector, line.metrics.registry, self.line_status)
        except ValueError as err:
            raise ApiServerError(str(err)) from err
        config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.url = f"http://{settings.host}:{settings.port}"
        self._thread = threading.Thread(target=self._serve, name="linewatch-api", daemon=True)

    def _serve(self) -> None:
        with contextlib.suppress(SystemExit):  # uvicorn exits when it cannot listen; start() reports it
            self.server.run()

    def line_status(self) -> dict[str, Any]:
        summary = self.line.summary
        return {
            "running": self.line.running and not self.line.stopping,
            "frames_in": summary.frames_in,
            "inspected": summary.inspected,
            "ng": summary.ng,
            "dead_letters": dict(summary.dead_letters),
            "process_samples": summary.process_samples,
            "stopped_by": summary.stopped_by,
        }

    def start(self, timeout_s: float = 10.0) -> None:
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise ApiServerError(f"the API did not start on {self.url} (is the port in use?)")
            time.sleep(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=10.0)


async def _wait_for_ctrl_c() -> None:
    interrupted = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, interrupted.set)
    try:
        await interrupted.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def _run(line: Line, server: ApiServer | None) -> LineSummary:
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()

    def interrupt() -> None:
        if line.stopping and task is not None:
            task.cancel()  # a second Ctrl-C: stop now
        else:
            log.info("stopping: finishing the frames already read (Ctrl-C again to stop at once)")
            line.stop("interrupted")

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, interrupt)
    try:
        summary = await line.run()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    if server is not None and summary.stopped_by is None:
        print(f"the line has run out of frames; still serving on {server.url} (Ctrl-C to quit)", flush=True)
        await _wait_for_ctrl_c()
    return summary


def run_line(line: Line, server: ApiServer | None = None) -> LineSummary:
    """Run ``line`` until its sources end or Ctrl-C, serving the API meanwhile when ``server`` is given.

    With a server, the API stays up after the line has stopped on its own, until Ctrl-C.
    """
    if server is not None:
        server.start()
    try:
        return asyncio.run(_run(line, server))
    except asyncio.CancelledError:
        raise KeyboardInterrupt from None
    finally:
        if server is not None:
            server.stop()
