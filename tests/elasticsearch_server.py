"""An Elasticsearch-API server for the tests, and a TCP proxy that can cut the line to it.

By default the fixture starts ``osmem-server`` (PyPI: an in-memory server speaking the OpenSearch 3
REST API, so the store's OpenSearch flavour is what it covers). With ``LINEWATCH_TEST_ES_URL`` set
(e.g. ``https://elastic:secret@es:9200?ca_certs=/ca.pem``) the same tests run on that server instead.
Each test gets its own index prefix, so tests never see each other's records.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest


@pytest.fixture(scope="session")
def es_server_url() -> Iterator[str]:
    """The server's base URL (no prefix)."""
    if url := os.environ.get("LINEWATCH_TEST_ES_URL"):
        yield url
        return
    from osmem_server import OsmemServer

    server = OsmemServer.start(japanese=False)
    try:
        yield server.url
    finally:
        server.close()


def store_url(base: str, prefix: str, **options: str) -> str:
    """``base`` with ``/prefix`` as its path and ``options`` added to its query."""
    parts = urlsplit(base)
    query = "&".join(filter(None, [parts.query, *(f"{k}={v}" for k, v in options.items())]))
    return urlunsplit((parts.scheme, parts.netloc, f"/{prefix}", query, ""))


@pytest.fixture
def es_url(es_server_url: str) -> str:
    """A store URL with a fresh index prefix; writes are searchable when they return."""
    return store_url(es_server_url, f"lwt-{uuid.uuid4().hex[:10]}", refresh="true")


class CuttableProxy:
    """Forwards TCP connections from a local port to ``target``; ``cut()`` drops every connection
    and refuses new ones (the server is unreachable), ``mend()`` lets them through again."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._open = threading.Event()
        self._open.set()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if not self._open.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        self._open.clear()
        with self._lock:
            for s in self._sockets:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                    s.close()
                except OSError:
                    pass
            self._sockets.clear()

    def mend(self) -> None:
        self._open.set()

    def close(self) -> None:
        self._closed = True
        self.cut()
        self._listener.close()


@pytest.fixture
def es_proxy(es_server_url: str) -> Iterator[CuttableProxy]:
    parts = urlsplit(es_server_url)
    assert parts.hostname is not None
    proxy = CuttableProxy(parts.hostname, parts.port or 9200)
    yield proxy
    proxy.close()
