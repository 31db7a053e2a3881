"""linewatch vs. anomalib 2.7.0 (PatchCore and PaDiM), side by side on the shared real datasets.

Same backbone weights (the shared ImageNet MobileNetV2, ReLU6 → ReLU), same layers (features.6 +
features.13), same 256x256 input, 2 torch threads. Each run is its own process so that its peak RSS
is its own; all accuracy numbers are computed by services/vision/metrics.py from each side's scores
and 256x256 anomaly maps, so both are measured by the same yardstick.

    .venv/bin/python benchmarks/engine_vs_anomalib.py            # both sets, both sides
    .venv/bin/python benchmarks/engine_vs_anomalib.py --skip-peer  # linewatch only
    .venv/bin/python benchmarks/engine_vs_anomalib.py --peer-from benchmarks/results/earlier.json

``--variants destseg`` adds linewatch's DeSTSeg (its own three teacher layers of the same backbone,
trained on CPU at its default steps). linewatch runs twice per set: with its defaults (the position
weight and the image score's top share chosen at training time on synthetic defects painted on
held-out good images, ``auto``) and as plain PatchCore (``--position-weight 0``). ``--variants``
picks; ``positions`` is the fixed 0.55 that was chosen on the magnetic-tile test images before
``auto`` existed.

The peer needs its own environment (see benchmarks/peer_anomalib.py): `.venv-bench`.
Prints one table and writes benchmarks/results/engine_vs_anomalib.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LINEWATCH_SHARED", ROOT.parent / "shared"))
WEIGHTS = SHARED / "weights" / "mobilenet_v2_imagenet_dequant.pth"
SETS = {
    "bottle": SHARED / "datasets" / "mvtec_bottle",
    "magnetic_tile": SHARED / "datasets" / "magnetic_tile",
}
LAYERS = ["features.6", "features.13"]
COLUMNS = [
    "image_auroc",
    "pixel_auroc",
    "pro",
    "pixel_ap",
    "iap",
    "fit_s",
    "ips_b1",
    "ips_b8",
    "rss_fit_mb",
    "rss_infer_mb",
]


def run_measured(command: list[str], log: Path) -> tuple[str, float, float]:
    """Run a command; return its stdout, wall seconds and its own peak RSS in MB (wait4 rusage)."""
    started = time.perf_counter()
    with log.open("ab") as err:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=err, cwd=ROOT)
        assert process.stdout is not None
        out = process.stdout.read().decode()
        _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(command[:4])}... failed (exit {status}); see {log}")
    return out, time.perf_counter() - started, usage.ru_maxrss / 1024.0


VARIANTS: dict[str, tuple[str, list[str]]] = {
    # the position weight and image top share chosen on synthetic defects painted on the held-out
    # good images (no test image is looked at)
    "default": ("linewatch PatchCore (defaults)", []),
    "plain": ("linewatch PatchCore, no positions", ["--position-weight", "0"]),
    # the weight that was chosen on the magnetic-tile test images before ``auto`` existed
    "positions": ("linewatch PatchCore+positions 0.55", ["--position-weight", "0.55"]),
    # DeSTSeg at its defaults (teacher layers features.3/6/13 of the same MobileNetV2, trained on
    # synthetic defects); its training budget is in the row (steps, seconds, device)
    "destseg": ("linewatch DeSTSeg (defaults)", ["--detector", "destseg"]),
}
DEFAULT_VARIANTS = ("default", "plain")


def linewatch_side(
    name: str, data: Path, work: Path, coreset: float, log: Path, variant: str = "default"
) -> dict[str, Any]:
    cli = [str(ROOT / ".venv" / "bin" / "linewatch")]
    side, extra = VARIANTS[variant]
    model = work / f"linewatch-{name}-{variant}"
    _, _, rss_fit = run_measured(
        [
            *cli,
            "train",
            "--data",
            str(data),
            "--category",
            name,
            "--out",
            str(model),
            "--weights",
            str(WEIGHTS),
            "--activation",
            "relu",
            *([] if variant == "destseg" else ["--layers", *LAYERS, "--coreset", str(coreset)]),
            "--image-size",
            "256",
            "--threads",
            "2",
            *extra,
        ],
        log,
    )
    card = json.loads((model / "card.json").read_text())
    row: dict[str, Any] = {
        "side": side,
        "train_flags": " ".join(extra),
        "coreset": coreset,
        "fit_s": card["training"]["fit_seconds"],
        "rss_fit_mb": rss_fit,
        "bank": card["tensors"].get("memory_bank", [0])[0],
    }
    trained = card["training"].get("destseg")
    if trained:
        row["destseg"] = {
            stage: {k: trained[stage][k] for k in ("steps", "best_step", "stopped_early", "seconds")}
            for stage in ("student", "segmentation")
        } | {"device": trained["device"]}
    chosen = card["training"].get("position_choice")
    if chosen and "skipped" in chosen:
        row["chosen"] = "W=0.0 (too few held-out images)"
    elif chosen:
        row["chosen"] = f"W={chosen['position_weight']} top={chosen['image_top_share']}"
    for batch in (8, 1):
        out, _, rss = run_measured(
            [
                *cli,
                "evaluate",
                "--model",
                str(model),
                "--data",
                str(data),
                "--category",
                name,
                "--json",
                "--batch-size",
                str(batch),
                "--threads",
                "2",
            ],
            log,
        )
        result = json.loads(out)
        row[f"ips_b{batch}"] = result["images_per_s"]
        if batch == 8:
            row.update(
                {
                    k: result[k]
                    for k in (
                        "image_auroc",
                        "pixel_auroc",
                        "pro",
                        "pixel_ap",
                        "iap",
                        "iap90",
                        "image_f1",
                        "fpr",
                        "fnr",
                        "n_images",
                    )
                }
            )
            row["rss_infer_mb"] = result["peak_rss_mb_inference"]
            row["rss_evaluate_mb"] = rss
    return row


def peer_command(model: str, name: str, data: Path, coreset: float, npz: Path) -> list[str]:
    """The peer's run on one set in its own environment, writing scores, maps and masks to ``npz``."""
    return [
        str(ROOT / ".venv-bench" / "bin" / "python"),
        str(ROOT / "benchmarks" / "peer_anomalib.py"),
        *("--model", model, "--data", str(data), "--category", name),
        *("--weights", str(WEIGHTS), "--layers", *LAYERS, "--image-size", "256"),
        *("--coreset", str(coreset), "--threads", "2", "--out", str(npz)),
    ]


def peer_side(model: str, name: str, data: Path, work: Path, coreset: float, log: Path) -> dict[str, Any]:
    from services.vision.metrics import evaluate_detection

    npz = work / f"peer-{model}-{name}.npz"
    out, _, rss = run_measured(peer_command(model, name, data, coreset, npz), log)
    reported = json.loads(out.strip().splitlines()[-1])
    saved = np.load(npz)
    metrics = evaluate_detection(
        saved["scores"],
        saved["labels"],
        saved["maps"].astype(np.float32),
        saved["masks"],
        threshold=float("inf"),
    )
    return {
        "side": f"anomalib {'PatchCore' if model == 'patchcore' else 'PaDiM'}",
        "coreset": coreset if model == "patchcore" else None,
        "fit_s": reported["fit_s"],
        "ips_b1": reported["images_per_s_b1"],
        "ips_b8": reported["images_per_s_b8"],
        "rss_fit_mb": reported["peak_rss_mb"],
        "rss_infer_mb": reported["peak_rss_mb"],
        "rss_process_mb": rss,
        **{
            k: metrics[k]
            for k in ("image_auroc", "pixel_auroc", "pro", "pixel_ap", "iap", "iap90", "image_f1")
        },
        "n_images": int(saved["labels"].size),
    }


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}" if value < 10 else f"{value:.1f}"
    return str(value)


def print_table(rows: list[dict[str, Any]]) -> None:
    header = ["set", "side", "coreset", *COLUMNS]
    lines = [header] + [[fmt(r.get(c)) for c in ["set", "side", "coreset", *COLUMNS]] for r in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for i, line in enumerate(lines):
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)))
        if i == 0:
            print("  ".join("-" * w for w in widths))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    parser.add_argument("--coreset", type=float, default=0.02, help="linewatch coreset ratio")
    parser.add_argument(
        "--peer-coreset",
        type=float,
        nargs="+",
        default=[0.05, 0.001],
        help="anomalib PatchCore coreset ratio per set (its selection runs at ~90 picks/s)",
    )
    parser.add_argument("--skip-peer", action="store_true")
    parser.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS), choices=list(VARIANTS))
    parser.add_argument(
        "--peer-from",
        type=Path,
        help="take the peer's rows from this earlier result of this script instead of running it again "
        "(its PatchCore takes about 25 minutes here); the rows are marked with where they came from",
    )
    parser.add_argument("--peer-models", nargs="+", default=["padim", "patchcore"])
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "engine_vs_anomalib.json"
    )
    args = parser.parse_args()
    if not WEIGHTS.is_file():
        print(f"shared weights not found at {WEIGHTS}", file=sys.stderr)
        return 2
    rows: list[dict[str, Any]] = []
    reused: list[dict[str, Any]] = []
    if args.peer_from is not None:
        earlier = json.loads(args.peer_from.read_text())
        reused = [
            row | {"measured": f"earlier run: {args.peer_from.name} of {earlier.get('when', 'unknown')}"}
            for row in earlier["rows"]
            if not str(row["side"]).startswith("linewatch")
        ]
    log = args.out.with_suffix(".log")
    log.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="lw-bench-") as tmp:
        work = Path(tmp)
        for i, name in enumerate(args.sets):
            data = SETS[name]
            for variant in args.variants:
                print(f"[{name}] linewatch {variant} ...", file=sys.stderr, flush=True)
                rows.append({"set": name, **linewatch_side(name, data, work, args.coreset, log, variant)})
            if args.peer_from is not None:
                rows.extend(row for row in reused if row["set"] == name)
                continue
            if args.skip_peer:
                continue
            for model in args.peer_models:
                coreset = args.peer_coreset[min(i, len(args.peer_coreset) - 1)]
                print(f"[{name}] anomalib {model} ...", file=sys.stderr, flush=True)
                rows.append({"set": name, **peer_side(model, name, data, work, coreset, log)})
    print_table(rows)
    args.out.write_text(
        json.dumps(
            {
                "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "threads": 2,
                "image_size": 256,
                "layers": LAYERS,
                "rows": rows,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"\nwritten {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
