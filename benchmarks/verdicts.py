"""Verdicts at the shipped defaults against the calibration that came before them, on both shared sets.

Two PatchCore models per set, trained with the flags of engine_vs_anomalib.py:

    before    ``--folds 0 --review-fpr 0``: 15% of train/good held out to calibrate, OK / NG only
    defaults  the shipped defaults: every good image scored out of sample in 5 folds, a REVIEW band
              at review FPR 0.10

Each is evaluated in its own process (``linewatch evaluate --json``) on the test set: false alarms
(good parts called NG), misses (defective parts called OK), the REVIEW shares, the card's estimated
miss rate at the same point, accuracy, and the fit time (both trained in turn on the same, otherwise
idle, machine).

    .venv/bin/python benchmarks/verdicts.py [--sets bottle magnetic_tile] [--threads 2]

Prints a table and writes benchmarks/results/verdicts.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from engine_vs_anomalib import LAYERS, SETS, WEIGHTS  # noqa: E402

CLI = str(ROOT / ".venv" / "bin" / "linewatch")
VARIANTS = {"before": ["--folds", "0", "--review-fpr", "0"], "defaults": []}
COLUMNS = (
    "fpr",
    "miss_rate",
    "estimated_miss_rate",
    "good_review_share",
    "defect_review_share",
    "fnr",
    "image_auroc",
    "pixel_ap",
    "pro",
)


def train_command(name: str, data: Path, model: Path, variant: str, threads: int) -> list[str]:
    command = [CLI, "train", "--data", str(data), "--category", name, "--out", str(model)]
    command += ["--weights", str(WEIGHTS), "--activation", "relu", "--layers", *LAYERS]
    return [*command, "--threads", str(threads), *VARIANTS[variant]]


def run(name: str, data: Path, variant: str, out: Path, threads: int) -> dict[str, Any]:
    model = out / f"{name}-{variant}"
    subprocess.run(
        train_command(name, data, model, variant, threads),
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    card = json.loads((model / "card.json").read_text())
    evaluated = subprocess.run(
        [
            CLI,
            "evaluate",
            "--model",
            str(model),
            "--data",
            str(data),
            "--category",
            name,
            "--json",
            "--threads",
            str(threads),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    result = json.loads(evaluated.stdout)
    row = {key: result.get(key) for key in COLUMNS}
    row["fit_seconds"] = card["training"]["fit_seconds"]
    row["ng_threshold"] = card["image_calibration"]["threshold"]
    row["method"] = card["image_calibration"]["method"]
    row["n_calibration"] = card["image_calibration"]["n_scores"]
    return row


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "verdicts.json")
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="linewatch-verdicts-") as scratch:
        for name in args.sets:
            for variant in VARIANTS:
                row = {"set": name, "variant": variant} | run(
                    name, SETS[name], variant, Path(scratch), args.threads
                )
                rows.append(row)
                print(json.dumps(row), flush=True)
    header = ["set", "variant", *COLUMNS, "fit_seconds", "n_calibration"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        cells = [
            row[key] if isinstance(row[key], str) else f"{row[key]:.3f}" if row[key] is not None else "n/a"
            for key in header
        ]
        print("| " + " | ".join(str(cell) for cell in cells) + " |")
    args.out.write_text(json.dumps({"threads": args.threads, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
