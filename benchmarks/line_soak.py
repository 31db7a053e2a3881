"""A long run of the embedded line: does its memory stay flat?

``--frames`` frames (default 10,000) go through the embedded line (``Line``, default options but
``keep_frames=False``, so that only heat maps and records stay on disk; detectors in worker
processes, as ``linewatch run`` runs them) from an in-memory source
that loops over ``--distinct`` pre-rendered synthetic parts, each frame with a fresh capture time and
frame id, with the line's process samples (one a second) from memory too. The process's resident
set size (``VmRSS`` in /proc/<pid>/status), summed over this process and the line's detector
processes, is sampled before the line starts and then every ``--every`` stored records. (The sum
counts the libraries every process maps, torch's among them, once per process.)

Reported: RSS growth over the first quarter of the frames (from before the line started to 25 %:
threads, caches, allocator arenas) against the last quarter (75 % to the last sample while the line
runs), the last quarter's growth per 1,000 frames, a least-squares slope over the second half, and
the verdict: flat when the last quarter grew by at most ``--flat-mb`` MB. Plus the RSS once the line
has ended, the throughput and latency of the whole run and the size of the stores.

    .venv/bin/python benchmarks/line_soak.py --model /tmp/m          # ~2-5 minutes on 2 cores
    .venv/bin/python benchmarks/line_soak.py --frames 2000 --model /tmp/m

Prints a table and writes benchmarks/results/line_soak.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from line_throughput import (
    FRAME_PERIOD_S,
    RESULTS,
    MemoryFrameSource,
    MemoryProcessSource,
    environment,
    load_or_train,
    print_table,
    render,
)
from tqdm import tqdm

from services.inference.process import ProcessInference
from services.inference.urls import open_inference
from services.storage.sqlite_record_store import SqliteRecordStore
from services.storage.stores import open_blob_store
from services.stream.runtime import Line, LineOptions


def status_mb(key: str, pid: int | str = "self") -> float:
    """A size from /proc/<pid>/status in MB (VmRSS, RssAnon, RssFile, ...); 0 for a process gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for row in status:
                if row.startswith(f"{key}:"):
                    return int(row.split()[1]) / 1024.0
    except FileNotFoundError:
        return 0.0
    raise RuntimeError(f"no {key} in /proc/{pid}/status")


def rss_mb() -> float:
    """This process's resident set size in MB (VmRSS)."""
    return status_mb("VmRSS")


def line_mb(line: Line, key: str) -> float:
    """``key`` summed over this process and the line's running detector processes."""
    processes = line.inference.workers if isinstance(line.inference, ProcessInference) else []
    workers = [w.pid for w in processes if w.pid is not None]
    return status_mb(key) + sum(status_mb(key, pid) for pid in workers)


@dataclass(frozen=True)
class Sample:
    frames: int  # records stored when the sample was taken
    seconds: float  # since the line started
    rss_mb: float  # this process and the detector processes
    anon_mb: float  # heap, arenas, tensors
    file_mb: float  # mapped files, libraries
    workers_mb: float  # the detector processes' part of rss_mb

    @classmethod
    def of(cls, line: Line, frames: int, seconds: float) -> Sample:
        total = line_mb(line, "VmRSS")
        return cls(
            frames, seconds, total, line_mb(line, "RssAnon"), line_mb(line, "RssFile"), total - rss_mb()
        )


class RssSampler:
    """Samples RSS each time ``line.summary.inspected`` passes a multiple of ``every`` (polls), while
    the line runs: once it has ended its detector processes exit, and a sample then would catch some
    of them gone (the last record can be stored just before)."""

    def __init__(self, line: Line, every: int, total: int, poll_s: float = 0.02) -> None:
        self.line, self.every, self.total, self.poll_s = line, every, total, poll_s
        self.samples = [Sample.of(line, 0, 0.0)]  # before the line starts, then while it runs
        self.after: Sample | None = None  # once the line has ended (its threads gone)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._started = time.perf_counter()

    def __enter__(self) -> RssSampler:
        self._started = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()
        self.after = Sample.of(self.line, self.line.summary.inspected, self._elapsed())

    def _elapsed(self) -> float:
        return time.perf_counter() - self._started

    def _run(self) -> None:
        next_mark = self.every
        with tqdm(total=self.total, desc="soak", unit="frame", mininterval=2.0) as bar:
            while not self._done.wait(self.poll_s):
                done = self.line.summary.inspected
                bar.update(done - bar.n)
                if done >= next_mark and self.line.running:
                    sample = Sample.of(self.line, done, self._elapsed())
                    if not self.line.running:  # its workers may have been exiting: not the line's memory
                        continue
                    self.samples.append(sample)
                    bar.set_postfix(rss_mb=f"{sample.rss_mb:.0f}")
                    next_mark = (done // self.every + 1) * self.every


def rss_at(samples: list[Sample], frames: float) -> Sample:
    """The sample taken closest to ``frames`` stored records."""
    return min(samples, key=lambda s: abs(s.frames - frames))


def slope_mb_per_1000(samples: list[Sample]) -> float:
    """The least-squares growth of RSS, in MB per 1,000 frames, over ``samples``."""
    if len(samples) < 2:
        return 0.0
    frames = np.array([s.frames for s in samples], dtype=float)
    rss = np.array([s.rss_mb for s in samples])
    return float(1000 * np.polyfit(frames, rss, 1)[0])


def disk_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--frames", type=int, default=10_000)
    parser.add_argument("--distinct", type=int, default=300, help="pre-rendered parts the source loops over")
    parser.add_argument("--every", type=int, default=500, help="sample RSS every this many records")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--model", type=Path, help="a model directory to use, or to train into if empty")
    parser.add_argument("--train-parts", type=int, default=60)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--flat-mb", type=float, default=5.0, help="most last-quarter growth called flat")
    parser.add_argument("--keep-frames", action="store_true", help="keep the raw frame blobs too")
    parser.add_argument(
        "--detector-threads-only",
        action="store_true",
        help="run the line's detectors as threads of this process (inference local:// for process://)",
    )
    parser.add_argument("--work", type=Path, help="where the stores go (default: a temporary folder)")
    parser.add_argument("--out", type=Path, default=RESULTS / "line_soak.json")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    options = LineOptions(keep_frames=args.keep_frames)
    inference = "local://" if args.detector_threads_only else "process://"  # `linewatch run` uses processes
    with tempfile.TemporaryDirectory(prefix="line-soak-", dir=args.work) as tmp:
        work = Path(tmp)
        inspector, model_dir = load_or_train(args.model, work, args.train_parts, args.seed)
        rendered = render(min(args.distinct, args.frames), args.seed, args.size)
        frames = MemoryFrameSource(rendered, args.frames, tag="soak")
        process = MemoryProcessSource(rendered, int(args.frames * FRAME_PERIOD_S) + 2)
        records = SqliteRecordStore(work / "records.db")
        blobs = open_blob_store((work / "blobs").as_uri(), group_commit=True)  # as `linewatch run` opens it
        try:
            port = open_inference(inference, {rendered.recipe: inspector}, options.max_batch)
            line = Line([frames], [process], port, records, blobs, options)
            with RssSampler(line, args.every, args.frames) as sampler:
                summary = asyncio.run(line.run())
            stored = records.count_inspections()
        finally:
            records.close()
            blobs.close()
        db_mb = sum(p.stat().st_size for p in work.glob("records.db*")) / 1e6
        blobs_mb = disk_mb(work / "blobs")
    if stored != args.frames or summary.frame_dead_letters:
        raise RuntimeError(f"stored {stored} of {args.frames} frames; dead letters {summary.dead_letters}")

    samples, after = sampler.samples, sampler.after
    start, q1 = samples[0], rss_at(samples, args.frames / 4)
    q3, end = rss_at(samples, 3 * args.frames / 4), samples[-1]
    last_growth = end.rss_mb - q3.rss_mb
    per_1000 = 1000 * last_growth / max(1, end.frames - q3.frames)
    second_half = slope_mb_per_1000([s for s in samples if s.frames >= args.frames / 2])
    flat = last_growth <= args.flat_mb
    rows: list[dict[str, Any]] = [
        {
            "frames": s.frames if s is not after else "ended",
            "seconds": round(s.seconds, 1),
            "rss_mb": round(s.rss_mb, 1),
            "anon_mb": round(s.anon_mb, 1),
            "file_mb": round(s.file_mb, 1),
            "workers_mb": round(s.workers_mb, 1),
        }
        for s in [*samples, *([after] if after is not None else [])]
    ]
    print_table(rows, ["frames", "seconds", "rss_mb", "anon_mb", "file_mb", "workers_mb"])
    summary_row = {
        "frames": stored,
        "seconds": round(summary.wall_s, 1),
        "fps": round(summary.throughput, 2),
        "p50_ms": round(summary.latency_ms(50), 1),
        "p99_ms": round(summary.latency_ms(99), 1),
        "rss_start_mb": round(start.rss_mb, 1),
        "rss_end_mb": round(end.rss_mb, 1),
        "first_q_mb": round(q1.rss_mb - start.rss_mb, 1),
        "last_q_mb": round(last_growth, 1),
        "db_mb": round(db_mb, 1),
        "blobs_mb": round(blobs_mb, 1),
    }
    print()
    print_table([summary_row], list(summary_row))
    print(
        f"\nfirst quarter: {q1.rss_mb - start.rss_mb:+.1f} MB (from before the line started); "
        f"last quarter: {last_growth:+.1f} MB ({per_1000:+.2f} MB per 1,000 frames; fitted over the "
        f"second half: {second_half:+.2f}) -> memory {'flat' if flat else 'GROWING'} "
        f"(flat: at most {args.flat_mb} MB in the last quarter)"
    )
    result: dict[str, Any] = {
        "benchmark": "line_soak",
        "environment": environment(args.threads),
        "options": {
            "frames": args.frames,
            "distinct": args.distinct,
            "every": args.every,
            "size": args.size,
            "model": str(args.model or model_dir),
            "line": asdict(options) | {"cameras": None, "lines": None, "inference": inference},
        },
        "summary": summary_row,
        "first_quarter": {
            "from": asdict(start),
            "to": asdict(q1),
            "growth_mb": round(q1.rss_mb - start.rss_mb, 2),
        },
        "last_quarter": {
            "from": asdict(q3),
            "to": asdict(end),
            "growth_mb": round(last_growth, 2),
            "mb_per_1000_frames": round(per_1000, 3),
        },
        "second_half_fit_mb_per_1000_frames": round(second_half, 3),
        "after_run": asdict(after) if after is not None else None,
        "flat_mb": args.flat_mb,
        "flat": flat,
        "samples": [asdict(s) for s in samples],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
