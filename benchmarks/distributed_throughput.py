"""The distributed line (broker → Faust workers → Triton) against the embedded line, same frames,
same model, same machine, one run; and ``POST /v1/inspect`` under concurrent load.

Definitions:

- frames: ``--frames`` parts of the synthetic line, PNG-encoded in memory before anything is timed
  (as ``line_throughput.py``), with the line's process samples (published first).
- embedded: ``linewatch run``'s runtime (``Line``, ``process://`` detectors) from an in-memory
  source to stored records (fresh SQLite and file blob store).
- distributed: a local Tansu broker, tritonserver on the CPU serving the model exported with
  ``linewatch triton export`` (two detector instances of one torch thread each), and ``linewatch
  worker`` processes (``triton://``, the default agent concurrency and micro-batching). The workers
  are started and warmed up on a few frames first; then the frames are published (claim check into a
  file blob store) as fast as the producer goes. frames/s = frames / (last record's ``inspected_at``
  − first publish); latency = each record's ``inspected_at`` − the moment its frame was handed to
  the producer.
- variants: one worker with Triton's dynamic batching on, off, and two workers (on).
- api: ``linewatch serve --model`` in a process of its own (one detector thread with
  micro-batching), ``--uploads`` PNG uploads from ``--clients`` concurrent clients (httpx, in this
  process); every upload must succeed and be stored once.
- worker memory: the resident set of each worker sampled every second (``--soak`` frames through
  one worker give the flat-memory check over a long run).

    .venv/bin/python benchmarks/distributed_throughput.py --frames 300
    .venv/bin/python benchmarks/distributed_throughput.py --soak 10000 --only soak

Prints a table and writes benchmarks/results/distributed_throughput.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import line_throughput as lt

from schemas.inspection import Inspection
from services.commands.compose import open_stores
from services.commands.demo_distributed import start_worker
from services.config import LinewatchSettings
from services.distributed.broker import LocalBroker
from services.distributed.ingest import publish_frames, publish_process
from services.distributed.producer import Publisher
from services.distributed.topics import ensure_topics
from services.inference.triton_repo import Serving, export
from services.inference.triton_server import LocalTriton, install
from services.ingest.ports import CapturedFrame
from services.network import free_port
from services.storage.query import InspectionQuery
from services.storage.sqlite_record_store import SqliteRecordStore
from services.stream.runtime import LineOptions

RESULTS = lt.RESULTS
TARGET = 0.7  # distributed (and API) frames/s over the embedded line's, at least
WARM = 4
SERVE = [sys.executable, "-m", "services.cli", "serve"]


class Stamped:
    """A frame source that notes when each frame was handed to the producer; the frames come from
    ``cameras`` cameras in turn, so that their keys spread over the topic's partitions."""

    def __init__(self, source: lt.MemoryFrameSource, cameras: int = 4) -> None:
        self.source, self.name, self.cameras = source, source.name, cameras
        self.handed: dict[str, float] = {}

    def frames(self) -> Iterator[Any]:
        for i, frame in enumerate(self.source.frames()):
            if isinstance(frame, CapturedFrame):
                frame = replace(frame, camera_id=f"cam-{i % self.cameras + 1}")
                self.handed[frame.frame_id] = time.time()
            yield frame

    def close(self) -> None:
        pass


def rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def wait_for(path: Path, count: int, processes: list[subprocess.Popen[bytes]], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists():
            store = SqliteRecordStore(path)
            try:
                if store.count_inspections() >= count:
                    return
            finally:
                store.close()
        if any(p.poll() is not None for p in processes):
            raise RuntimeError("a worker exited: see its log")
        time.sleep(0.2)
    raise RuntimeError(f"fewer than {count} records after {timeout_s} s")


def run_distributed(
    rendered: lt.Rendered,
    count: int,
    model_dir: Path,
    broker: str,
    inference: str,
    workers: int,
    work: Path,
    name: str,
) -> dict[str, Any]:
    work.mkdir(parents=True)
    tag = secrets.token_hex(3)
    raw: dict[str, Any] = {
        "models": {rendered.recipe: str(model_dir)},
        "stores": {"records": f"sqlite:///{work / 'records.db'}", "blobs": (work / "blobs").as_uri()},
        "inference": inference,
        "batching": {"max_batch": 8},
        "kafka": {
            "bootstrap_servers": broker,
            "app_id": f"bench-{tag}",
            "topics": {
                n: f"b{tag}.{n}" for n in ("frames", "process", "inspections", "alerts", "dead_letters")
            },
        },
    }
    config = work / "linewatch.yaml"
    config.write_text(yaml.safe_dump(raw), encoding="utf-8")
    settings = LinewatchSettings(**raw)
    ensure_topics(settings.kafka)
    publisher = Publisher(settings.kafka, "bench")
    topics = settings.kafka.topics
    seconds = int((count + WARM) * lt.FRAME_PERIOD_S) + 2
    publish_process(
        [lt.MemoryProcessSource(rendered, seconds)], publisher, topics.process, topics.dead_letters
    )
    stores = open_stores(settings.stores.records, settings.stores.blobs)
    rules = LineOptions().admission(frozenset(settings.models))
    processes: list[subprocess.Popen[bytes]] = []
    memory: list[list[float]] = [[] for _ in range(workers)]
    sampling = threading.Event()
    try:
        processes += [start_worker(config, work, f"worker-{i}") for i in range(workers)]
        warm = lt.MemoryFrameSource(rendered, WARM, tag="warm")
        publish_frames([warm], rules, stores.blobs, publisher, topics.frames, topics.dead_letters)
        publisher.flush(30)
        wait_for(work / "records.db", WARM, processes, 180)
        time.sleep(8 if workers > 1 else 1)  # every worker has its partitions

        def sample() -> None:
            while not sampling.wait(1.0):
                for i, p in enumerate(processes):
                    memory[i].append(rss_mib(p.pid))

        threading.Thread(target=sample, daemon=True).start()
        source = Stamped(
            # captured after the warm-up frames, within the process samples published first
            lt.MemoryFrameSource(rendered, count, lt.DEFAULT_START + lt.timedelta(seconds=WARM), tag=name)
        )
        started = time.time()
        summary = publish_frames([source], rules, stores.blobs, publisher, topics.frames, topics.dead_letters)
        assert publisher.flush(60) == 0 and summary.published == count, "frames not all published"
        wait_for(work / "records.db", WARM + count, processes, 120 + count / 2)
        sampling.set()
        records = SqliteRecordStore(work / "records.db")
        try:
            stored: list[Inspection] = []
            while page := records.query_inspections(InspectionQuery(limit=5000, offset=len(stored))):
                stored += page
            dead = records.count_dead_letters()
        finally:
            records.close()
    finally:
        sampling.set()
        for p in processes:
            p.terminate()
        for p in processes:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        stores.close()
    ours = [r for r in stored if r.frame_id in source.handed]
    joined = sum(1 for r in ours if r.process.status == "ok")
    ids = [r.frame_id for r in ours]
    assert len(ids) == len(set(ids)) == count, f"{len(ids)} records for {count} frames"
    done = [r.inspected_at.timestamp() for r in ours]
    latencies = sorted((r.inspected_at.timestamp() - source.handed[r.frame_id]) * 1000 for r in ours)
    wall = max(done) - started
    return {
        "kind": name,
        "frames": count,
        "frames_per_s": round(count / wall, 2),
        "p50_ms": round(lt.percentile(latencies, 50), 1),
        "p99_ms": round(lt.percentile(latencies, 99), 1),
        "dead_letters": dead,
        "process_ok": joined,
        "worker_rss_mib": [
            {"first": round(m[0], 1), "last": round(m[-1], 1), "max": round(max(m), 1)} for m in memory if m
        ],
    }


def run_api(rendered: lt.Rendered, model_dir: Path, uploads: int, clients: int, work: Path) -> dict[str, Any]:
    """``--uploads`` PNG uploads from ``--clients`` concurrent clients against ``linewatch serve``
    (a process of its own, as a plant runs it; the clients are this process)."""
    import httpx

    key = secrets.token_urlsafe(12)
    port = free_port()
    records = work / "api.db"
    command = [*SERVE, "--records", f"sqlite:///{records}", "--blobs", (work / "api-blobs").as_uri()]
    command += ["--model", f"{rendered.recipe}={model_dir}", "--port", str(port)]
    log = (work / "api.log").open("wb")
    server = subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, env=os.environ | {"LINEWATCH_API_KEYS": key}
    )
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            raise RuntimeError(f"linewatch serve did not become ready: see {work / 'api.log'}")
        time.sleep(0.5)
    latencies: list[float] = []
    failures: list[str] = []

    async def client(index: int, queue: asyncio.Queue[int], http: httpx.AsyncClient) -> None:
        while True:
            try:
                i = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            frame = rendered.frames[i % len(rendered.frames)]
            started = time.perf_counter()
            reply = await http.post(
                "/v1/inspect",
                files={"image": (f"{i}.png", frame.data, "image/png")},
                data={
                    "line_id": rendered.line_id,
                    "station_id": rendered.station_id,
                    "camera_id": rendered.camera_id,
                    "recipe": rendered.recipe,
                    "part_id": f"api-{i}",
                },
                headers={"X-API-Key": key},
            )
            latencies.append((time.perf_counter() - started) * 1000)
            if reply.status_code != 200:
                failures.append(f"{reply.status_code} {reply.text[:200]}")

    async def load() -> float:
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(uploads):
            queue.put_nowait(i)
        limits = httpx.Limits(max_connections=clients)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=120, limits=limits) as http:
            started = time.perf_counter()
            await asyncio.gather(*(client(c, queue, http) for c in range(clients)))
            return time.perf_counter() - started

    try:
        wall = asyncio.run(load())
    finally:
        server.terminate()
        server.wait(30)
        log.close()
    store = SqliteRecordStore(records)
    try:
        stored = store.count_inspections()
    finally:
        store.close()
    latencies.sort()
    return {
        "kind": f"api ({clients} clients)",
        "frames": uploads,
        "frames_per_s": round(uploads / wall, 2),
        "p50_ms": round(lt.percentile(latencies, 50), 1),
        "p99_ms": round(lt.percentile(latencies, 99), 1),
        "failed": len(failures),
        "stored": stored,
        "first_failure": failures[0] if failures else None,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--size", type=int, default=256, help="frame side in pixels")
    parser.add_argument("--uploads", type=int, default=300)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--soak", type=int, default=0, help="frames through one worker for the memory check")
    parser.add_argument("--model", type=Path, help="reuse (or train into) this model directory")
    parser.add_argument(
        "--only",
        nargs="*",
        default=["embedded", "one", "one-nobatch", "two", "api"],
        help="which runs (embedded one one-nobatch two api soak)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "distributed_throughput.json")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    install()
    with tempfile.TemporaryDirectory(prefix="linewatch-dist-") as scratch:
        work = Path(scratch)
        inspector, model_dir = lt.load_or_train(args.model, work, 40, 0)
        rendered = lt.render(min(args.frames, 120), 0, args.size)
        rows: list[dict[str, Any]] = []
        if "embedded" in args.only:
            run, _ = lt.run_line(
                inspector, rendered, args.frames, LineOptions(), "process://", work / "embedded"
            )
            lat = sorted(run.latencies_ms)
            rows.append(
                {
                    "kind": "embedded (process://)",
                    "frames": run.frames,
                    "frames_per_s": round(run.fps, 2),
                    "p50_ms": round(lt.percentile(lat, 50), 1),
                    "p99_ms": round(lt.percentile(lat, 99), 1),
                }
            )
        repos = {}
        for batching in (True, False):
            repo = work / f"repo-{'on' if batching else 'off'}"
            export(model_dir, repo, rendered.recipe, serving=Serving(instances=2, dynamic_batching=batching))
            repos[batching] = repo
        broker = LocalBroker(work / "broker.log").start()
        try:
            plan = [
                ("one", "1 worker, Triton batching on", True, 1, args.frames),
                ("one-nobatch", "1 worker, Triton batching off", False, 1, args.frames),
                ("two", "2 workers, Triton batching on", True, 2, args.frames),
                ("soak", f"1 worker, {args.soak} frames (memory)", True, 1, args.soak),
            ]
            for key, name, batching, workers, count in plan:
                if key not in args.only or count <= 0:
                    continue
                with LocalTriton(repos[batching], work / f"triton-{key}.log") as triton:
                    row = run_distributed(
                        rendered, count, model_dir, broker.address, triton.grpc_url, workers, work / key, name
                    )
                rows.append(row)
                print(json.dumps(row), flush=True)
        finally:
            broker.stop()
        if "api" in args.only:
            rows.append(run_api(rendered, model_dir, args.uploads, args.clients, work))
    embedded = next((r["frames_per_s"] for r in rows if r["kind"].startswith("embedded")), None)
    for row in rows:
        row["vs_embedded"] = round(row["frames_per_s"] / embedded, 3) if embedded else None
    columns = ["kind", "frames", "frames_per_s", "vs_embedded", "p50_ms", "p99_ms"]
    lt.print_table(rows, columns)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {"target_vs_embedded": TARGET, "rows": rows, "environment": lt.environment(os.cpu_count() or 1)}
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
