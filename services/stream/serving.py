"""Running a line from a command: Ctrl-C drains it, and the API and dashboard can serve beside it.

The first Ctrl-C (or SIGTERM) stops reading the sources and lets the frames already read reach the
store; a second one interrupts at once (every record stored so far is complete). The server (see
``services/api/server.py``) runs in its own thread, so that it leaves the signals to the line.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Protocol

from services.stream.runtime import Line
from services.stream.summary import LineSummary

log = logging.getLogger(__name__)


class Server(Protocol):
    """What the line's runner needs of a server beside it."""

    url: str

    def start(self) -> None: ...
    def stop(self) -> None: ...


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


async def _run(line: Line, server: Server | None) -> LineSummary:
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


def run_line(line: Line, server: Server | None = None) -> LineSummary:
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
