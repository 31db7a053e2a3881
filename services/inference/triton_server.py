"""A local Triton Inference Server for the demo, the tests and one-machine plants.

The ``tritonserver`` binary (2.51, CPU and CUDA, with its Python backend) ships inside the PyPI
package ``nvidia-pytriton``. That package pins numpy<2, which linewatch does not, so it is never
installed into the environment: :func:`install` downloads its wheel and unpacks only the server,
its backends and libraries into a folder of their own (``make triton`` does it into ``.triton``).

The Python backend's models run in this environment (its interpreter comes first on PATH), so they
import linewatch as every other runtime does. Its stub was compiled against numpy 1: numpy 2 arrays
handed through it come back corrupted, so linewatch's models move tensors only through DLPack
(see ``triton_backend.py``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request
import zipfile
from pathlib import Path

from services.network import free_port

PYTRITON = "nvidia-pytriton==0.7.0"  # bundles tritonserver 2.51.0
HOME_ENV = "LINEWATCH_TRITON_HOME"
DEFAULT_HOME = Path(".triton")
STUB = "triton_python_backend_stub"


class TritonServerError(RuntimeError):
    """The server could not be found, installed or started."""


def triton_home(home: Path | str | None = None) -> Path:
    """Where the server is unpacked: ``home``, else $LINEWATCH_TRITON_HOME, else ``.triton``."""
    return Path(home or os.environ.get(HOME_ENV) or DEFAULT_HOME).resolve()


def installed(home: Path) -> bool:
    return (home / "bin" / "tritonserver").is_file() and (home / "backends" / "python" / STUB).is_file()


def install(home: Path | str | None = None, wheel: Path | None = None) -> Path:
    """Unpack tritonserver from the nvidia-pytriton wheel into ``home`` (downloading the wheel with
    pip when none is given); returns ``home``. Does nothing when it is already there."""
    target = triton_home(home)
    if installed(target):
        return target
    with tempfile.TemporaryDirectory() as scratch:
        if wheel is None:
            command = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", PYTRITON, "-d", scratch]
            result = subprocess.run(command, capture_output=True, text=True)
            found = sorted(Path(scratch).glob("nvidia_pytriton-*.whl"))
            if result.returncode != 0 or not found:
                raise TritonServerError(f"could not download {PYTRITON}: {result.stderr.strip()[-800:]}")
            wheel = found[0]
        unpack(wheel, target)
    return target


def unpack(wheel: Path, target: Path) -> None:
    """The server, its backends, caches and bundled libraries out of the wheel, nothing else."""
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    with zipfile.ZipFile(wheel) as archive:
        for member in archive.namelist():
            for prefix, into in (("pytriton/tritonserver/", ""), ("nvidia_pytriton.libs/", "libs/")):
                if member.startswith(prefix) and not member.endswith("/"):
                    out = staging / into / member[len(prefix) :]
                    out.parent.mkdir(parents=True, exist_ok=True)
                    with archive.open(member) as src, out.open("wb") as dst:
                        shutil.copyfileobj(src, dst)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = staging / "python_backend_stubs" / version / STUB
    if not stub.is_file():
        raise TritonServerError(f"{wheel.name} has no Python backend stub for Python {version}")
    shutil.copy2(stub, staging / "backends" / "python" / STUB)
    for path in (staging / "bin" / "tritonserver", staging / "backends" / "python" / STUB):
        path.chmod(0o755)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)


def server_environment(home: Path) -> dict[str, str]:
    """The environment tritonserver needs: this interpreter's libpython and the bundled libraries on
    the loader path, this environment's ``bin`` first on PATH (the Python backend runs its models
    with the interpreter it finds there)."""
    env = dict(os.environ)
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    paths = [libdir, str(home / "libs"), env.get("LD_LIBRARY_PATH", "")]
    env["LD_LIBRARY_PATH"] = ":".join(p for p in paths if p)
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    return env


class LocalTriton:
    """tritonserver over a model repository, on free loopback ports; :attr:`grpc_url` is what the
    ``triton://`` adapter takes. Stopped with :meth:`stop`, killed (SIGKILL) with :meth:`kill`."""

    def __init__(
        self,
        repository: Path,
        log: Path,
        home: Path | str | None = None,
        grpc_port: int | None = None,
        extra_args: list[str] | None = None,
    ) -> None:
        self.repository, self.log, self.home = Path(repository), Path(log), triton_home(home)
        self.grpc_port = grpc_port or free_port()
        self.http_port = free_port()
        self.metrics_port = free_port()
        self.extra_args = list(extra_args or [])
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def grpc_url(self) -> str:
        return f"triton://127.0.0.1:{self.grpc_port}"

    def command(self) -> list[str]:
        return [
            str(self.home / "bin" / "tritonserver"),
            f"--model-repository={self.repository.resolve()}",
            f"--backend-directory={self.home / 'backends'}",
            f"--cache-directory={self.home / 'caches'}",
            "--grpc-address=127.0.0.1",
            "--http-address=127.0.0.1",
            "--metrics-address=127.0.0.1",
            f"--grpc-port={self.grpc_port}",
            f"--http-port={self.http_port}",
            f"--metrics-port={self.metrics_port}",
            "--allow-gpu-metrics=false",
            "--exit-timeout-secs=10",
            *self.extra_args,
        ]

    def start(self, timeout_s: float = 120.0) -> LocalTriton:
        """Start it and wait until every model is ready; raises TritonServerError with the end of
        its log when it exits or is not ready in time."""
        if not installed(self.home):
            raise TritonServerError(
                f"no tritonserver in {self.home}: run `make triton` (or `linewatch triton install`)"
            )
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(  # a session of its own: its model stubs go with it
                self.command(),
                stdout=out,
                stderr=subprocess.STDOUT,
                env=server_environment(self.home),
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout_s
        while not self.ready():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise TritonServerError(f"tritonserver did not become ready: {self.tail()}")
            time.sleep(0.25)
        return self

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/v2/health/ready", timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def tail(self, chars: int = 2000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def kill(self) -> None:
        """SIGKILL the server and its Python backend stubs at once, as a crashed container would
        (a stub whose server was killed alone lingers, holding its model's memory)."""
        if self.process is not None:
            self._kill_group()
            self.process.wait(10)

    def stop(self) -> None:
        """Stop the server (it unloads its models, ending their stubs), then whatever is left."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(30)
        if self.process is not None:
            self._kill_group()
            self.process.wait(10)

    def _kill_group(self) -> None:
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):  # (the server and every stub are gone already)
            os.killpg(self.process.pid, signal.SIGKILL)

    def __enter__(self) -> LocalTriton:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
