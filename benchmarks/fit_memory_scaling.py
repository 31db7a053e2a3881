"""Peak memory of `linewatch train` (its defaults) as the number of training images grows (200 → 1,000).

The candidate pool is capped (250,000 patches, float16), so each image contributes fewer patches
as more are given and the memory bank and peak RSS stay flat. Training images are the shared
magnetic-tile `train/good` files, linked (repeated under new names past 762) into temporary MVTec
folders. Prints a table and writes benchmarks/results/fit_memory_scaling.json.

    .venv/bin/python benchmarks/fit_memory_scaling.py [--sizes 200 500 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from engine_vs_anomalib import SHARED, WEIGHTS, run_measured  # noqa: E402


def linked_dataset(target: Path, sources: list[Path], n_images: int) -> Path:
    folder = target / "tile" / "train" / "good"
    folder.mkdir(parents=True)
    for i in range(n_images):
        source = sources[i % len(sources)]
        os.symlink(source, folder / f"{i:05d}{source.suffix}")
    return target


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[200, 500, 1000])
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "fit_memory_scaling.json"
    )
    args = parser.parse_args()
    sources = sorted((SHARED / "datasets" / "magnetic_tile" / "magnetic_tile" / "train" / "good").iterdir())
    rows = []
    log = args.out.with_suffix(".log")
    with tempfile.TemporaryDirectory(prefix="lw-scale-") as tmp:
        for n_images in args.sizes:
            data = linked_dataset(Path(tmp) / str(n_images), sources, n_images)
            model = Path(tmp) / f"model-{n_images}"
            _, wall, rss = run_measured(
                [
                    str(ROOT / ".venv" / "bin" / "linewatch"),
                    "train",
                    "--data",
                    str(data),
                    "--category",
                    "tile",
                    "--out",
                    str(model),
                    "--weights",
                    str(WEIGHTS),
                    "--activation",
                    "relu",
                    "--threads",
                    "2",
                ],
                log,
            )
            card = json.loads((model / "card.json").read_text())
            rows.append(
                {
                    "train_images": n_images,
                    "fit_images": card["training"]["n_fit"],
                    "memory_bank": card["tensors"]["memory_bank"][0],
                    "position_weight": card["params"]["position_weight"],
                    "fit_s": card["training"]["fit_seconds"],
                    "wall_s": round(wall, 1),
                    "peak_rss_mb": round(rss, 1),
                }
            )
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(f"{'train images':>12}  {'fitted':>6}  {'bank':>6}  {'W':>4}  {'fit s':>6}  {'peak RSS MB':>11}")
    for row in rows:
        print(
            f"{row['train_images']:>12}  {row['fit_images']:>6}  {row['memory_bank']:>6}  "
            f"{row['position_weight']:>4}  {row['fit_s']:>6.1f}  {row['peak_rss_mb']:>11.0f}"
        )
    args.out.write_text(json.dumps({"rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
