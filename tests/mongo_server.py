"""A MongoDB-wire-protocol server for the tests.

By default the fixture starts ``nx-27017`` (PyPI: a server speaking MongoDB's wire protocol over an
in-memory SQLite database, driven here by the real pymongo client). With ``LINEWATCH_TEST_MONGO_URL``
set (e.g. ``mongodb://user:secret@mongo:27017``) the same tests run on that server instead. Each test
gets its own database, so tests never see each other's labels.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="session")
def mongo_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The server's base URL (no database)."""
    if url := os.environ.get("LINEWATCH_TEST_MONGO_URL"):
        yield url
        return
    port = _free_port()
    pid_file = tmp_path_factory.mktemp("nx-27017") / "nx-27017.pid"  # its own: it refuses a second server
    command = [
        sys.executable,
        "-m",
        "nx_27017.nx_27017",
        "--db",
        "memory",
        "--host",
        "127.0.0.1",
        "-p",
        str(port),
    ]
    command += ["--pid-file", str(pid_file)]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    _, err = server.communicate(timeout=5) if server.poll() is not None else ("", "")
                    raise RuntimeError(f"nx-27017 did not start on port {port}: {err[-2000:]}") from None
                time.sleep(0.1)
        yield f"mongodb://127.0.0.1:{port}"
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()


@pytest.fixture
def mongo_url(mongo_server_url: str) -> str:
    """A label-store URL naming a fresh database on the server."""
    parts = urlsplit(mongo_server_url)
    return urlunsplit((parts.scheme, parts.netloc, f"/lwt-{uuid.uuid4().hex[:10]}", parts.query, ""))
