"""The diffusion stage on its own: latency per frame and peak memory on the CPU at the default size.

Each configuration runs in a fresh process (peak RSS is a process's high-water mark): it imports
the engine, loads the model, scores ``--frames`` test frames of the model's set in batches of
``--batch``, and reports the RSS after the imports, after loading, and at its peak, with the
seconds per frame after a warm-up batch. ``--chunks`` compares how many frames at a time go
through the full-resolution parts (autoencoder, feature discrepancies); the shipped default is
``DiffusionModel.full_size_chunk``.

    .venv/bin/python benchmarks/diffusion_stage.py --model DIR --data ROOT --category CAT
        [--batch 8] [--chunks 2 8] [--frames 16] [--threads 2]

Prints a table and writes benchmarks/results/diffusion_stage.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _status() -> dict[str, int]:
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return {k: int(fields[k].split()[0]) // 1024 for k in ("VmRSS", "RssAnon", "RssFile", "VmHWM")}


def child(args: argparse.Namespace) -> dict[str, Any]:
    """One configuration, in this (fresh) process."""
    import torch

    torch.set_num_threads(args.threads)
    from services.vision.dataset import list_test_samples
    from services.vision.diffusion.model import DiffusionModel
    from services.vision.images import load_image
    from services.vision.inspector import Inspector

    imported = _status()
    inspector = Inspector.load(args.model)
    loaded = _status()
    if not isinstance(inspector.model, DiffusionModel):
        raise SystemExit(f"{args.model} is not a diffusion model")
    inspector.model.full_size_chunk = args.chunk
    samples, _ = list_test_samples(args.data, args.category)
    frames = [load_image(s.path) for s in samples[: args.frames + args.batch]]
    inspector.predict(frames[: args.batch])  # warm-up
    began = time.perf_counter()
    for start in range(args.batch, len(frames), args.batch):
        inspector.predict(frames[start : start + args.batch])
    seconds = (time.perf_counter() - began) / max(1, len(frames) - args.batch)
    peak = _status()
    return {
        "batch": args.batch,
        "chunk": args.chunk,
        "threads": args.threads,
        "seconds_per_frame": round(seconds, 3),
        "rss_after_imports_mb": imported["VmRSS"],
        "rss_after_load_mb": loaded["VmRSS"],
        "peak_rss_mb": peak["VmHWM"],
        "file_backed_mb_at_end": peak["RssFile"],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--category", required=True)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--chunks", type=int, nargs="+", default=[2, 8])
    ap.add_argument("--chunk", type=int, help=argparse.SUPPRESS)  # the child's one configuration
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "diffusion_stage.json")
    args = ap.parse_args()
    if args.chunk is not None:
        print(json.dumps(child(args)))
        return 0
    rows = []
    for chunk in args.chunks:
        command = [sys.executable, __file__, "--model", str(args.model), "--data", str(args.data)]
        command += ["--category", args.category, "--batch", str(args.batch), "--chunk", str(chunk)]
        command += ["--frames", str(args.frames), "--threads", str(args.threads)]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    columns = list(rows[0])
    print(" | ".join(columns))
    for row in rows:
        print(" | ".join(str(row[c]) for c in columns))
    result = {
        "model": str(args.model),
        "category": args.category,
        "rows": rows,
        "run_at": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
