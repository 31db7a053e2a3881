"""The embedded line against the bare detector on the same frames: what the stream machinery costs.

Definitions (the same frames, the same model, the same batch size, ``torch.set_num_threads``):

- frames: ``--frames`` parts of the synthetic moulding line (``SyntheticLine``, ``--size`` pixels),
  rendered and PNG-encoded in memory before anything is timed (rendering is the source's cost, not
  the line's), with the process samples of the same line (one a second) in memory too.
- bare detector: those frames in batches of ``max_batch`` (the line's batch size): decode the PNG,
  ``Inspector.preprocess``, ``Inspector.score_batch``, ``Inspector.interpret``. Nothing stored.
  Measured two ways, and the faster one each round is the reference: ``bare`` is one loop with all
  the torch threads; ``bare-split`` is as many worker threads as the line runs detectors, with
  the line's torch threads each, taking batches in turn (the same split of the cores the line
  uses, without any of its other work). Latency is the time of the batch a frame was in.
- line: the embedded runtime (``services.stream.runtime.Line``, default options) from an in-memory
  frame source to stored records: claim check into a file blob store, decode, process join,
  detection in batches, defects, heat maps stored, records upserted into SQLite (WAL), all on a fresh
  store per round. The source hands frames over as fast as the line takes them. Latency is the
  line's own: a frame read off its source to its record stored.
- rounds: each round runs both bare detectors, then the line, back to back; a round counts only when
  other processes used at most ``--max-others`` of the CPUs meanwhile (this is a shared machine).
- ratio: the median over the rounds of line frames/s over the faster bare frames/s in the round; the
  frames/s shown are medians, the latency percentiles are over every frame of the rounds counted.

    .venv/bin/python benchmarks/line_throughput.py                 # 600 frames, train a detector
    .venv/bin/python benchmarks/line_throughput.py --model /tmp/m  # reuse (or train into) /tmp/m

Prints a table and writes benchmarks/results/line_throughput.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

import services
from schemas.dead_letter import DeadLetter
from schemas.process import ProcessSample
from services.inference.local import detector_plan, set_torch_threads
from services.inference.process import ProcessInference
from services.inference.urls import open_inference
from services.ingest.frame_ids import replay_frame_id
from services.ingest.ports import CapturedFrame
from services.ingest.synthetic import DEFAULT_START, ProcessState, SyntheticLine, write_dataset
from services.steps.admit import encode_frame
from services.storage.sqlite_record_store import SqliteRecordStore
from services.storage.stores import open_blob_store
from services.stream.runtime import Line, LineOptions
from services.stream.summary import LineSummary
from services.vision.artifact import CARD_FILE
from services.vision.images import decode_image
from services.vision.inspector import Inspector
from services.vision.train import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LINEWATCH_SHARED", ROOT.parent / "shared"))
WEIGHTS = SHARED / "weights" / "mobilenet_v2_imagenet_dequant.pth"
RESULTS = ROOT / "benchmarks" / "results"
TARGET = 0.9  # the line's frames/s over the bare detector's, at least
FRAME_PERIOD_S = 0.5  # the synthetic line's pace (capture times only; nothing waits for it)


# ------------------------------------------------------------------------------------ the frames


@dataclass(frozen=True, eq=False)
class RenderedFrame:
    """A synthetic part as its camera would hand it over: PNG bytes and what is known about it."""

    part_id: str
    data: bytes = field(repr=False)


@dataclass(frozen=True)
class Rendered:
    frames: list[RenderedFrame]
    states: list[ProcessState]  # the process, one sample a second from the line's start
    line_id: str
    station_id: str
    camera_id: str
    recipe: str
    machine_id: str


def render(n: int, seed: int, size: int) -> Rendered:
    """``n`` parts off the synthetic line, PNG-encoded, and the process states over their run."""
    line = SyntheticLine(seed=seed, size=size, frame_period_s=FRAME_PERIOD_S)
    frames = [
        RenderedFrame(part.part_id, encode_frame(part.image))
        for part in tqdm(line.parts(n), total=n, desc="rendering frames", unit="frame")
    ]
    seconds = int(n * FRAME_PERIOD_S) + 2
    states = [state for _, state in line.process.samples(seconds)]
    return Rendered(frames, states, line.line_id, line.station_id, "cam-1", line.recipe, line.machine_id)


class MemoryFrameSource:
    """``count`` frames from ``rendered`` (looping over them), each with a fresh capture time and id.

    Frame ``i`` is taken ``i * FRAME_PERIOD_S`` after ``start``; its id is derived from that time and
    ``i``, so no two frames of a run share an id even when they share their bytes.
    """

    def __init__(self, rendered: Rendered, count: int, start: datetime = DEFAULT_START, tag: str = "bench"):
        self.rendered, self.count, self.start, self.tag = rendered, count, start, tag
        self.name = f"memory:{tag}"

    def frames(self) -> Iterator[CapturedFrame | DeadLetter]:
        r = self.rendered
        for i in range(self.count):
            frame = r.frames[i % len(r.frames)]
            captured_at = self.start + timedelta(seconds=i * FRAME_PERIOD_S)
            yield CapturedFrame(
                frame_id=replay_frame_id(captured_at, f"{self.tag}:{i}"),
                line_id=r.line_id,
                station_id=r.station_id,
                camera_id=r.camera_id,
                recipe=r.recipe,
                captured_at=captured_at,
                source_ref=f"{self.tag}:{frame.part_id}#{i}",
                part_id=f"{frame.part_id}-{i}",
                data=frame.data,
            )

    def close(self) -> None:
        pass


class MemoryProcessSource:
    """One process sample a second from ``start``, for ``seconds`` seconds (the states loop)."""

    def __init__(self, rendered: Rendered, seconds: int, start: datetime = DEFAULT_START) -> None:
        self.rendered, self.seconds, self.start = rendered, seconds, start
        self.name = f"memory:{rendered.machine_id}"
        self.units = dict(ProcessState.UNITS)

    def samples(self) -> Iterator[ProcessSample | DeadLetter]:
        r = self.rendered
        for i in range(self.seconds):
            yield ProcessSample(
                line_id=r.line_id,
                machine_id=r.machine_id,
                ts=self.start + timedelta(seconds=i),
                params=r.states[i % len(r.states)].as_params(),
                units=self.units,
            )

    def close(self) -> None:
        pass


# ------------------------------------------------------------------------------------ the model


def load_or_train(model_dir: Path | None, work: Path, train_parts: int, seed: int) -> tuple[Inspector, Path]:
    """The detector in ``model_dir``; trained there (or under ``work``) on good parts when missing."""
    target = model_dir or work / "model"
    if not (target / CARD_FILE).is_file():
        data = work / "train-data"
        print(f"training a detector on {train_parts} good parts into {target}", flush=True)
        write_dataset(data, n_train=train_parts, n_test=0, seed=seed)
        train(
            TrainConfig(
                data_root=data,
                category="synthetic",
                out_dir=target,
                weights=WEIGHTS,
                activation="relu",
                seed=seed,
                progress=False,
            )
        )
    return Inspector.load(target), target


# ------------------------------------------------------------------------------------ measuring


def cpu_s(who: int = resource.RUSAGE_SELF) -> float:
    """CPU seconds this process has used (all its threads), or with RUSAGE_CHILDREN its child
    processes that have ended (the line's detector processes end with the line)."""
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def machine_busy_s() -> float:
    """CPU seconds every process on the machine has used (``/proc/stat``), 0 where unknown."""
    try:
        with open("/proc/stat", encoding="ascii") as stat:
            fields = [int(v) for v in stat.readline().split()[1:]]
    except OSError:
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class Meter:
    """Wall time, this process's CPU time and the share of the machine other processes used."""

    def __enter__(self) -> Meter:
        self.busy0, self.cpu0, self.wall0 = machine_busy_s(), cpu_s(), time.perf_counter()
        self.children0 = cpu_s(resource.RUSAGE_CHILDREN)
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.wall0
        self.cpu = cpu_s() - self.cpu0
        children = cpu_s(resource.RUSAGE_CHILDREN) - self.children0  # (start-up and exit included)
        others = max(0.0, machine_busy_s() - self.busy0 - self.cpu - children)
        self.others_share = others / (self.seconds * (os.cpu_count() or 1))


@dataclass
class Run:
    kind: str  # "bare" or "line"
    frames: int
    seconds: float
    cpu_s: float
    others_share: float  # of the machine's CPU time, used by other processes meanwhile
    latencies_ms: list[float] = field(repr=False)

    @property
    def fps(self) -> float:
        return self.frames / self.seconds

    def row(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "frames": self.frames,
            "seconds": round(self.seconds, 3),
            "fps": round(self.fps, 2),
            "cpu_ms_per_frame": round(1000 * self.cpu_s / self.frames, 2),
            "others_pct": round(100 * self.others_share, 1),
            "p50_ms": round(percentile(self.latencies_ms, 50), 1),
            "p99_ms": round(percentile(self.latencies_ms, 99), 1),
        }


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else 0.0


def warm_up(inspector: Inspector, rendered: Rendered, batch: int) -> None:
    images = [decode_image(f.data) for f in rendered.frames[:batch]]
    for _ in range(2):
        raw = inspector.score_batch(inspector.preprocess(images))
        inspector.interpret(raw, [(image.shape[0], image.shape[1]) for image in images])


def detect_chunk(inspector: Inspector, chunk: list[CapturedFrame]) -> float:
    """Decode, preprocess, score and interpret one batch; its milliseconds."""
    batch_start = time.perf_counter()
    images = [decode_image(item.data or b"", item.source_ref) for item in chunk]
    raw = inspector.score_batch(inspector.preprocess(images))
    inspector.interpret(raw, [(image.shape[0], image.shape[1]) for image in images])
    return (time.perf_counter() - batch_start) * 1000.0


def run_bare(inspector: Inspector, rendered: Rendered, count: int, batch: int) -> Run:
    """Decode, preprocess, score and interpret ``count`` frames in batches of ``batch``, one loop."""
    source = MemoryFrameSource(rendered, count, tag="bare")
    captured = [c for c in source.frames() if isinstance(c, CapturedFrame)]
    latencies: list[float] = []
    with Meter() as meter:
        for at in range(0, len(captured), batch):
            chunk = captured[at : at + batch]
            latency_ms = detect_chunk(inspector, chunk)
            latencies.extend([latency_ms] * len(chunk))
    return Run("bare", len(captured), meter.seconds, meter.cpu, meter.others_share, latencies)


def run_bare_split(
    inspector: Inspector, rendered: Rendered, count: int, batch: int, plan: tuple[int, int]
) -> Run:
    """The same work as :func:`run_bare`, by ``plan[0]`` worker threads with ``plan[1]`` torch threads
    each, taking batches in turn."""
    workers, threads_each = plan
    source = MemoryFrameSource(rendered, count, tag="bare")
    captured = [c for c in source.frames() if isinstance(c, CapturedFrame)]
    chunks = iter([captured[at : at + batch] for at in range(0, len(captured), batch)])
    lock = threading.Lock()
    latencies: list[float] = []

    def work() -> None:
        set_torch_threads(threads_each)
        while True:
            with lock:
                chunk = next(chunks, None)
            if chunk is None:
                return
            latency_ms = detect_chunk(inspector, chunk)
            with lock:
                latencies.extend([latency_ms] * len(chunk))

    with Meter() as meter:
        threads = [threading.Thread(target=work, name=f"bare-{i}") for i in range(workers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    return Run("bare-split", len(captured), meter.seconds, meter.cpu, meter.others_share, latencies)


def run_line(
    inspector: Inspector, rendered: Rendered, count: int, options: LineOptions, inference: str, work: Path
) -> tuple[Run, Line]:
    """The embedded line over ``count`` frames into fresh stores under ``work``."""
    frames = MemoryFrameSource(rendered, count, tag="line")
    process = MemoryProcessSource(rendered, int(count * FRAME_PERIOD_S) + 2)
    records = SqliteRecordStore(work / "records.db")
    blobs = open_blob_store((work / "blobs").as_uri(), group_commit=True)  # as `linewatch run` opens it
    try:
        port = open_inference(inference, {rendered.recipe: inspector}, options.max_batch)
        line = Line([frames], [process], port, records, blobs, options)
        with Meter() as meter:
            summary = asyncio.run(line.run())
        stored = records.count_inspections()
    finally:
        records.close()
        blobs.close()
    check_line(summary, count, stored)
    latencies = list(summary.latencies_ms)
    # this process's CPU and what its detector processes used after starting (their start-up, timed
    # apart as LineSummary.startup_s, is not the line's throughput)
    workers = line.inference.workers if isinstance(line.inference, ProcessInference) else []
    cpu = meter.cpu + sum(worker.run_cpu_s for worker in workers)
    return Run("line", summary.inspected, summary.wall_s, cpu, meter.others_share, latencies), line


def check_line(summary: LineSummary, count: int, stored: int) -> None:
    if not (summary.inspected == stored == count and summary.frame_dead_letters == 0):
        raise RuntimeError(
            f"the line stored {stored} of {count} frames ({summary.inspected} inspected, "
            f"dead letters {summary.dead_letters}, stopped by {summary.stopped_by})"
        )


def step_means_ms(line: Line) -> dict[str, dict[str, float]]:
    """The line's own ``linewatch_line_step_seconds`` histogram: count and mean ms per step."""
    out: dict[str, dict[str, float]] = {}
    for metric in line.metrics.step_seconds.collect():
        sums: dict[str, float] = {}
        counts: dict[str, float] = {}
        for sample in metric.samples:
            step = sample.labels.get("step", "")
            if sample.name.endswith("_sum"):
                sums[step] = sample.value
            elif sample.name.endswith("_count"):
                counts[step] = sample.value
        for step, n in counts.items():
            if n:
                out[step] = {"count": n, "mean_ms": round(1000 * sums.get(step, 0.0) / n, 3)}
    return out


def environment(threads: int) -> dict[str, Any]:
    return {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": threads,
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "code": str(Path(services.__file__).parent),
    }


def print_table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    widths = [max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns]
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True)))
    for row in rows:
        print("  ".join(str(row.get(c, "")).rjust(w) for c, w in zip(columns, widths, strict=True)))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--frames", type=int, default=600)
    parser.add_argument("--size", type=int, default=256, help="frame side in pixels")
    parser.add_argument("--model", type=Path, help="a model directory to use, or to train into if empty")
    parser.add_argument("--train-parts", type=int, default=60)
    parser.add_argument(
        "--rounds", type=int, default=9, help="rounds of bare then line (single rounds spread over ±0.04)"
    )
    parser.add_argument(
        "--max-others",
        type=float,
        default=0.05,
        help="a round counts only if other processes used at most this share of the CPUs meanwhile",
    )
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--detectors", type=int, help="detectors of the inference port (default: its own)")
    parser.add_argument(
        "--detector-threads", type=int, help="torch threads per detector (default: the port's own)"
    )
    parser.add_argument(
        "--detector-threads-only",
        action="store_true",
        help="run the line's detectors as threads of this process (inference local:// for process://)",
    )
    parser.add_argument("--work", type=Path, help="where the stores go (default: a temporary folder)")
    parser.add_argument("--out", type=Path, default=RESULTS / "line_throughput.json")
    return parser.parse_args(argv)


def summarise(runs: list[Run], kind: str) -> dict[str, Any]:
    """Median frames/s of the runs, and latency percentiles over all their frames."""
    mine = [r for r in runs if r.kind == kind]
    fps = float(np.median([r.fps for r in mine]))
    latencies = [ms for r in mine for ms in r.latencies_ms]
    return {
        "kind": kind,
        "frames": sum(r.frames for r in mine),
        "seconds": round(sum(r.seconds for r in mine), 3),
        "fps": round(fps, 2),
        "best_fps": round(max(r.fps for r in mine), 2),
        "cpu_ms_per_frame": round(1000 * sum(r.cpu_s for r in mine) / sum(r.frames for r in mine), 2),
        "p50_ms": round(percentile(latencies, 50), 1),
        "p99_ms": round(percentile(latencies, 99), 1),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    options = LineOptions()
    plan = detector_plan(args.detectors, args.detector_threads, args.threads)
    # `linewatch run` and `demo` use detector processes
    inference = (
        f"{'local' if args.detector_threads_only else 'process'}://?detectors={plan[0]}&threads={plan[1]}"
    )
    print(f"line: {plan[0]} detector thread(s) with {plan[1]} torch thread(s) each; bare: {args.threads}")
    rounds: list[tuple[Run, Run, Run]] = []
    steps: list[dict[str, dict[str, float]]] = []
    with tempfile.TemporaryDirectory(prefix="line-throughput-", dir=args.work) as tmp:
        work = Path(tmp)
        inspector, model_dir = load_or_train(args.model, work, args.train_parts, args.seed)
        rendered = render(args.frames, args.seed, args.size)
        warm_up(inspector, rendered, options.max_batch)
        for round_ in range(args.rounds):
            bare_one = run_bare(inspector, rendered, args.frames, options.max_batch)
            bare_split = run_bare_split(inspector, rendered, args.frames, options.max_batch, plan)
            line_run, line = run_line(
                inspector, rendered, args.frames, options, inference, work / f"line-{round_}"
            )
            rounds.append((bare_one, bare_split, line_run))
            steps.append(step_means_ms(line))
            print(
                f"round {round_ + 1}: bare {bare_one.fps:.1f}, bare-split {bare_split.fps:.1f}, "
                f"line {line_run.fps:.1f} frames/s (other processes: "
                f"{', '.join(f'{100 * r.others_share:.0f} %' for r in rounds[-1])})",
                flush=True,
            )
    quiet = [i for i, trio in enumerate(rounds) if max(r.others_share for r in trio) <= args.max_others]
    used = quiet or list(range(len(rounds)))
    if not quiet:
        print(f"WARNING: other processes used more than {args.max_others:.0%} of the CPUs in every round")
    runs = [run for i in used for run in rounds[i]]
    ratios = [line_run.fps / max(one.fps, split.fps) for one, split, line_run in (rounds[i] for i in used)]
    ratio = float(np.median(ratios))
    table = [
        {
            "round": i + 1,
            **run.row(),
            "ratio": round(line_run.fps / max(one.fps, split.fps), 3) if run is line_run else "",
        }
        for i, (one, split, line_run) in enumerate(rounds)
        for run in (one, split, line_run)
    ]
    print()
    columns = ["round", "kind", "frames", "seconds", "fps", "ratio", "cpu_ms_per_frame", "others_pct"]
    print_table(table, [*columns, "p50_ms", "p99_ms"])
    bare_summary, split_summary = summarise(runs, "bare"), summarise(runs, "bare-split")
    line_summary = summarise(runs, "line") | {"ratio": round(ratio, 3)}
    print(
        f"\nover {len(used)} of {len(rounds)} rounds (median frames/s; ratio: median of the rounds' ratios):"
    )
    print_table(
        [bare_summary, split_summary, line_summary],
        ["kind", "frames", "seconds", "fps", "best_fps", "ratio", "cpu_ms_per_frame", "p50_ms", "p99_ms"],
    )
    mean_steps = {
        step: {
            "count": sum(s[step]["count"] for s in steps if step in s),
            "mean_ms": round(float(np.mean([s[step]["mean_ms"] for s in steps if step in s])), 3),
        }
        for step in sorted({step for s in steps for step in s})
    }
    print("\nline steps (mean ms over the rounds; batch steps per batch):")
    print_table([{"step": s, **v} for s, v in mean_steps.items()], ["step", "count", "mean_ms"])
    verdict = "met" if ratio >= TARGET else "NOT met"
    print(f"\nline / bare = {ratio:.3f} (target >= {TARGET}: {verdict})")
    result = {
        "benchmark": "line_throughput",
        "definitions": __doc__.split("Definitions")[1].split("    .venv")[0].strip() if __doc__ else "",
        "environment": environment(args.threads),
        "options": {
            "frames": args.frames,
            "size": args.size,
            "rounds": args.rounds,
            "max_others": args.max_others,
            "model": str(args.model or model_dir),
            "train_parts": args.train_parts,
            "line": asdict(options) | {"cameras": None, "lines": None, "inference": inference},
            "detectors": dict(zip(("detectors", "torch_threads_each"), plan, strict=True)),
        },
        "bare": bare_summary,
        "bare_split": split_summary,
        "line": line_summary,
        "ratio": round(ratio, 4),
        "target": TARGET,
        "met": ratio >= TARGET,
        "rounds_used": [i + 1 for i in used],
        "line_steps_ms": mean_steps,
        "rounds": table,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
