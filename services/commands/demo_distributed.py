"""``linewatch demo --distributed``: the distributed line on one machine, with one command.

A local Kafka-protocol broker (Tansu, from the installed packages), a local tritonserver serving
the demo's model (when ``make triton`` installed it), the producers (frames of the synthetic line,
its process samples), ``--workers`` Faust workers as processes of their own, and the dashboard over
the same record store. Ctrl-C stops the producers, the workers, Triton and the broker.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from services.commands.demo import DemoOptions, keep_earlier_run, serve_command, train_detector

if TYPE_CHECKING:
    from services.inference.triton_server import LocalTriton

POLL_S = 0.5


@dataclass
class DistributedSummary:
    published: int = 0
    inspected: int = 0
    ng: int = 0
    dead_letters: int = 0
    wall_s: float = 0.0  # from the first record inspected to the last (their inspected_at)
    startup_s: float = 0.0  # from the first frame published until every record was stored
    workers: list[int] = field(default_factory=list)  # their exit codes
    stopped_by: str | None = None

    def lines(self) -> list[str]:
        rate = (self.inspected - 1) / self.wall_s if self.wall_s > 0 else 0.0
        return [
            f"frames        {self.published} published, {self.inspected} inspected, "
            f"{self.dead_letters} dead letters",
            f"NG            {self.ng} of {self.inspected}",
            f"throughput    {rate:.1f} frames/s between the first record and the last ({self.wall_s:.1f} s; "
            f"all stored {self.startup_s:.1f} s after publishing began, the workers' start included)",
            f"workers       {len(self.workers)} (exit codes {', '.join(map(str, self.workers)) or '-'})",
        ] + ([f"stopped       {self.stopped_by}"] if self.stopped_by else [])


def count_records(url: str) -> int:
    """The records stored so far, read on a connection of its own (the workers write them)."""
    from services.storage.stores import open_record_store

    records = open_record_store(url)
    try:
        return records.count_inspections()
    finally:
        records.close()


def start_worker(config: Path, workdir: Path, name: str) -> subprocess.Popen[bytes]:
    """``linewatch worker`` in a process of its own: its state in ``workdir/name``, its output in
    ``workdir/name.log``."""
    command = [sys.executable, "-m", "services.cli", "worker", "--config", str(config)]
    with (workdir / f"{name}.log").open("wb") as out:
        return subprocess.Popen(
            [*command, "--datadir", str(workdir / name)], stdout=out, stderr=subprocess.STDOUT
        )


def start_triton(model_dir: Path, recipe: str, workdir: Path) -> LocalTriton | None:
    """tritonserver over the demo's model exported into ``workdir/triton``, when ``make triton``
    installed it (None, said, when not: the workers then score in-process)."""
    from services.inference.triton_repo import Serving, export
    from services.inference.triton_server import LocalTriton, installed, triton_home

    if not installed(triton_home()):
        print("tritonserver not installed (make triton): the workers score with local://", flush=True)
        return None
    repo = workdir / "triton"
    shutil.rmtree(repo, ignore_errors=True)
    export(model_dir, repo, recipe, serving=Serving(instances=2))
    server = LocalTriton(repo, workdir / "triton.log").start()
    print(f"tritonserver (CPU) on {server.grpc_url}, models in {repo}", flush=True)
    return server


def run_distributed_demo(options: DemoOptions, workers: int = 1) -> DistributedSummary:
    from services.commands.compose import build_api, open_stores, serve_beside
    from services.config import LinewatchSettings
    from services.distributed.broker import LocalBroker
    from services.distributed.ingest import publish_frames, publish_process
    from services.distributed.producer import Publisher
    from services.distributed.topics import ensure_topics
    from services.ingest.simulator_source import SimulatorSource
    from services.ingest.synthetic import DEFAULT_START, SyntheticLine
    from services.ingest.synthetic_source import SyntheticSource
    from services.storage.query import InspectionQuery
    from services.vision.inspector import Inspector

    workdir = options.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    keep_earlier_run(workdir, options.fresh)
    model_dir = train_detector(options)
    start = datetime.now(UTC) if options.serve else DEFAULT_START
    frames = SyntheticSource(seed=options.seed, parts=options.parts, realtime=options.serve, start=start)
    machine = SyntheticLine(seed=options.seed, start=start)
    samples = None if options.serve else int((options.parts or 0) * frames.line.frame_period_s) + 10
    process = SimulatorSource(machine.process, machine.line_id, machine.machine_id, samples)
    broker = LocalBroker(workdir / "broker.log").start()
    print(f"broker (Tansu, in memory) on {broker.address}", flush=True)
    try:
        triton = start_triton(model_dir, frames.line.recipe, workdir)
    except BaseException:
        broker.stop()
        raise
    inference = triton.grpc_url if triton is not None else "local://?detectors=1"
    raw: dict[str, Any] = {
        "models": {frames.line.recipe: str(model_dir)},
        "stores": {"records": f"sqlite:///{workdir / 'records.db'}", "blobs": (workdir / "blobs").as_uri()},
        "keep_frames": options.keep_frames,
        "inference": inference,  # without Triton: a detector thread per worker (they share the cores)
        "kafka": {"bootstrap_servers": broker.address, "app_id": f"linewatch-demo-{secrets.token_hex(3)}"},
    }
    config = workdir / "distributed.yaml"
    config.write_text(yaml.safe_dump(raw), encoding="utf-8")
    settings = LinewatchSettings(**raw)
    summary, stop = DistributedSummary(), threading.Event()
    processes: list[subprocess.Popen[bytes]] = []
    stores = open_stores(settings.stores.records, settings.stores.blobs)
    api = None
    try:
        ensure_topics(settings.kafka)
        processes += [start_worker(config, workdir, f"worker-{i}") for i in range(workers)]
        print(f"{workers} worker(s) starting; their logs: {workdir}/worker-*.log", flush=True)
        key = os.environ.get("LINEWATCH_DEMO_KEY") or secrets.token_urlsafe(12)
        if options.serve:
            from services.api.settings import ApiSettings, hash_key

            api_settings = ApiSettings(host="127.0.0.1", port=options.port, key_hashes=[hash_key(key)])
            api = build_api(api_settings, stores, {frames.line.recipe: Inspector.load(model_dir)})
            server = serve_beside(api_settings, api)
            server.start()
            print(f"dashboard: {server.url}/dashboard/  (API key for this run: {key})", flush=True)
        publisher = Publisher(settings.kafka, "linewatch-demo")
        topics = settings.kafka.topics
        rules = settings.line_options().admission(frozenset(settings.models))
        feeder = threading.Thread(
            target=publish_process,
            args=([process], publisher, topics.process, topics.dead_letters, stop),
            daemon=True,
        )
        feeder.start()
        started = time.monotonic()
        result = publish_frames(
            [frames], rules, stores.blobs, publisher, topics.frames, topics.dead_letters, stop
        )
        summary.published = result.published
        publisher.flush(60)
        expected = result.published
        print(
            f"published {expected} frames; waiting for the workers to store them (Ctrl-C stops)", flush=True
        )
        while count_records(settings.stores.records) < expected:
            if all(p.poll() is not None for p in processes):
                summary.stopped_by = "every worker exited (see worker-*.log)"
                break
            time.sleep(POLL_S)
        summary.startup_s = time.monotonic() - started
    except KeyboardInterrupt:
        summary.stopped_by = "interrupted"
    finally:
        stop.set()
        summary.inspected = stores.records.count_inspections()
        summary.ng = stores.records.count_inspections(InspectionQuery(verdict="NG"))
        summary.dead_letters = stores.records.count_dead_letters()
        stamps = [r.inspected_at for r in stores.records.query_inspections(InspectionQuery(limit=10_000))]
        if len(stamps) > 1:
            summary.wall_s = (max(stamps) - min(stamps)).total_seconds()
        for p in processes:
            if p.poll() is None:
                p.terminate()
        for p in processes:
            try:
                summary.workers.append(p.wait(30))
            except subprocess.TimeoutExpired:
                p.kill()
                summary.workers.append(p.wait(10))
        if api is not None:
            api.close()
        stores.close()
        broker.stop()
        if triton is not None:
            triton.stop()
    print(f"records in {workdir / 'records.db'}, frames and heat maps in {workdir / 'blobs'}")
    print("look again later (the dashboard at http://127.0.0.1:8000/dashboard/, the API with this key):")
    print(f"  {serve_command(workdir / 'records.db', (workdir / 'blobs').as_uri(), key)}")
    return summary
