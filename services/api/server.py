"""Serving the API and dashboard from a thread, beside a running line.

uvicorn runs in its own daemon thread, so that it leaves the signals (Ctrl-C drains the line) to the
line's loop.
"""

from __future__ import annotations

import contextlib
import threading
import time

from fastapi import FastAPI


class ApiServerError(RuntimeError):
    """The API cannot serve: its settings were refused, or it could not start listening."""


class ApiServer:
    """``app`` served by uvicorn on ``host:port`` in a daemon thread."""

    def __init__(self, app: FastAPI, host: str, port: int) -> None:
        import uvicorn

        config = uvicorn.Config(app, host=host, port=port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.url = f"http://{host}:{port}"
        self._thread = threading.Thread(target=self._serve, name="linewatch-api", daemon=True)

    def _serve(self) -> None:
        with contextlib.suppress(SystemExit):  # uvicorn exits when it cannot listen; start() reports it
            self.server.run()

    def start(self, timeout_s: float = 10.0) -> None:
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise ApiServerError(f"the API did not start on {self.url} (is the port in use?)")
            time.sleep(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout=10.0)
