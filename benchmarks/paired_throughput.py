"""Batch-8 throughput of linewatch and anomalib PatchCore, measured in alternation.

This machine's speed has two levels that change within seconds to minutes and that no process
controls (see docs/benchmarks.md), so two throughputs measured minutes apart compare the machine as much
as the code. Here each side is loaded once into processes of its own, which take turns: one timed
pass over the whole test set at batch 8, then the next process, the order rotated every round, so
each round's ratio compares the sides within seconds of each other.

Each side runs twice: with glibc's allocator as shipped (``stock``) and with its mmap and trim
thresholds raised (``kept``), so that freed memory is reused instead of handed back. anomalib's
PatchCore maps and unmaps its large activations for every batch as shipped (about 108,000 minor
page faults per batch of 8 here), which the second setting removes.

    .venv/bin/python benchmarks/paired_throughput.py --model MODEL_DIR --peer-bank /tmp/peer_bank.pt

``MODEL_DIR`` is a trained linewatch model (``linewatch train``, magnetic tile unless
``--category``); ``--peer-bank`` is the memory bank of a fitted anomalib PatchCore
(``peer_anomalib.py --model patchcore --save-bank PATH``); if the file is missing it is fitted and
saved first (about 5-8 minutes on magnetic tile at 0.1%). The peer runs in `.venv-bench` (see
benchmarks/peer_anomalib.py). Both sides time the model's forward pass on preprocessed images, as
``linewatch evaluate`` and the peer runner do. Prints one table and writes
benchmarks/results/paired_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from engine_vs_anomalib import SETS, WEIGHTS  # noqa: E402

PEER_PYTHON = ROOT / ".venv-bench" / "bin" / "python"
PEER_RUNNER = ROOT / "benchmarks" / "peer_anomalib.py"
RESULTS = ROOT / "benchmarks" / "results"
BATCH = 8
# glibc returns freed blocks above its mmap threshold (at most 32 MB by default) to the system at
# once and trims the heap's top, so a process whose batches need large buffers zero-fills fresh
# pages for every batch. "kept" raises both limits so that freed memory is reused instead.
ALLOCATORS: dict[str, dict[str, str]] = {
    "stock": {},
    "kept": {"MALLOC_MMAP_THRESHOLD_": str(1 << 30), "MALLOC_TRIM_THRESHOLD_": str(4 << 30)},
}


def linewatch_worker(model_dir: Path, data: Path, category: str, threads: int) -> None:
    """Load the model and the test images, then time one pass per line read on stdin."""
    sys.path.insert(0, str(ROOT))
    import torch

    from services.vision.dataset import list_test_samples
    from services.vision.images import ImageError, load_image
    from services.vision.inspector import Inspector

    torch.set_num_threads(threads)
    inspector = Inspector.load(model_dir)
    samples, _ = list_test_samples(data, category)
    images = []
    for sample in samples:
        try:
            images.append(load_image(sample.path))
        except ImageError:
            continue  # the peer skips nothing here; both sets load every shared test image
    batches = [inspector.preprocess(images[i : i + BATCH]) for i in range(0, len(images), BATCH)]

    def one_pass() -> float:
        began = time.perf_counter()
        for batch in batches:
            inspector.score_batch(batch)
        return len(images) / (time.perf_counter() - began)

    one_pass()  # warm-up
    print("ready", flush=True)
    for _ in sys.stdin:
        print(f"{one_pass():.3f}", flush=True)


def read_line(stream: IO[str], who: str) -> str:
    line = stream.readline()
    if not line:
        raise RuntimeError(f"the {who} worker exited early; see its messages above")
    return line.strip()


def ensure_peer_bank(bank: Path, data: Path, category: str, coreset: float, threads: int) -> None:
    if bank.exists():
        return
    print(f"fitting anomalib PatchCore ({coreset:.1%} coreset) to save its bank at {bank} ...", flush=True)
    bank.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            *(str(PEER_PYTHON), str(PEER_RUNNER), "--model", "patchcore"),
            *("--data", str(data), "--category", category, "--weights", str(WEIGHTS)),
            *("--coreset", str(coreset), "--threads", str(threads), "--limit-test", "8"),
            *("--out", str(bank.with_suffix(".npz")), "--save-bank", str(bank)),
        ],
        check=True,
        cwd=ROOT,
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, help="a trained linewatch model directory")
    parser.add_argument("--peer-bank", type=Path, help="a saved anomalib PatchCore memory bank (.pt)")
    parser.add_argument("--category", default="magnetic_tile", choices=list(SETS))
    parser.add_argument("--peer-coreset", type=float, default=0.001, help="only when the bank is fitted here")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS / "paired_throughput.json")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    data = SETS[args.category]
    if args.model is None:
        parser.error("--model is required")
    if args.worker:
        linewatch_worker(args.model, data, args.category, args.threads)
        return 0
    if args.peer_bank is None:
        parser.error("--peer-bank is required")
    if not PEER_PYTHON.exists():
        parser.error(f"{PEER_PYTHON} is missing: set up the peer's environment (benchmarks/peer_anomalib.py)")
    ensure_peer_bank(args.peer_bank, data, args.category, args.peer_coreset, args.threads)

    common = ["--category", args.category, "--threads", str(args.threads)]
    commands = {
        "linewatch": [sys.executable, __file__, "--worker", "--model", str(args.model), *common],
        "anomalib": [
            *(str(PEER_PYTHON), str(PEER_RUNNER), "--model", "patchcore", "--serve"),
            *("--data", str(data), "--weights", str(WEIGHTS), "--load-bank", str(args.peer_bank)),
            *common,
        ],
    }
    workers: dict[str, subprocess.Popen[str]] = {}
    for side, command in commands.items():
        for allocator, env in ALLOCATORS.items():
            workers[f"{side} {allocator}"] = subprocess.Popen(
                command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                cwd=ROOT,
                env=os.environ | env,
            )
    names = list(workers)
    rounds: list[dict[str, Any]] = []
    try:
        for name, worker in workers.items():
            assert worker.stdout is not None
            if read_line(worker.stdout, name) != "ready":
                raise RuntimeError(f"the {name} worker did not start")
        print("round " + " ".join(f"{name:>18}" for name in names) + "  ratios (same allocator)", flush=True)
        for number in range(args.rounds):
            order = names[number % len(names) :] + names[: number % len(names)]
            rates: dict[str, float] = {}
            for name in order:
                worker = workers[name]
                assert worker.stdin is not None and worker.stdout is not None
                worker.stdin.write("go\n")
                worker.stdin.flush()
                rates[name] = float(read_line(worker.stdout, name))
            ratios = {a: rates[f"linewatch {a}"] / rates[f"anomalib {a}"] for a in ALLOCATORS}
            rounds.append({"round": number, "order": order, "images_per_s": rates, "ratios": ratios})
            cells = " ".join(f"{rates[name]:>18.1f}" for name in names)
            print(f"{number:>5} {cells}  " + " ".join(f"{r:.2f}" for r in ratios.values()), flush=True)
    finally:
        for worker in workers.values():
            if worker.stdin:
                worker.stdin.close()
            worker.wait(timeout=60)
    summary: dict[str, Any] = {
        "category": args.category,
        "batch": BATCH,
        "threads": args.threads,
        "model": str(args.model),
        "peer_bank": str(args.peer_bank),
        "allocators": ALLOCATORS,
        "measured_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "median_images_per_s": {
            n: round(statistics.median(r["images_per_s"][n] for r in rounds), 1) for n in names
        },
        "ratio": {},
        "rounds": rounds,
    }
    for allocator in ALLOCATORS:
        series = [r["ratios"][allocator] for r in rounds]
        summary["ratio"][allocator] = {
            "median": round(statistics.median(series), 3),
            "min": round(min(series), 3),
            "max": round(max(series), 3),
        }
        print(
            f"linewatch / anomalib PatchCore, {allocator} allocator: median {statistics.median(series):.2f}, "
            f"range {min(series):.2f}-{max(series):.2f} over {len(series)} rounds"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
