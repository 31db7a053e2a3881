"""The ensemble against its members on the shared sets: accuracy, the paired-bootstrap spread of its
margin over linewatch's PatchCore defaults, and the cascade's throughput.

Trained models are read from ``--models`` (kept between runs; missing ones are trained with the flags
of engine_vs_anomalib.py, DeSTSeg taking 15–25 minutes per set on 2 cores):

    <set>-patchcore          linewatch's PatchCore defaults: the baseline
    <set>-patchcore-unseen   the same with --holdout-unseen: the ensemble's pre-screen member
    <set>-destseg            DeSTSeg at its defaults
    <set>-diffusion          the diffusion detector (only with --diffusion; about 10 minutes a set)

From them it builds ``<set>-ensemble`` (every frame to every member) and ``<set>-cascade`` (the
pre-screen passes ``--pass-share`` of good frames), which takes seconds; evaluates every model in its
own process (``linewatch evaluate --json``: the same metrics, images/s and peak RSS as the CLI); draws
the test images again with replacement ``--rounds`` times for the differences ensemble − PatchCore
(image AUROC, PRO, pixel AP; the same draw for both); and streams good frames (the test set's,
repeated to ``--frames``) through PatchCore alone, the cascade and the full ensemble, counting how
many passed the pre-screen.

    .venv/bin/python benchmarks/ensemble.py [--sets bottle magnetic_tile] [--rounds 200] [--diffusion]

Prints the tables and writes benchmarks/results/ensemble.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from engine_vs_anomalib import LAYERS, SETS, SHARED, WEIGHTS  # noqa: E402

from services.vision.dataset import list_test_samples  # noqa: E402
from services.vision.ensemble import EnsembleModel  # noqa: E402
from services.vision.evaluate import score_test_set  # noqa: E402
from services.vision.images import load_image  # noqa: E402
from services.vision.inspector import Inspector  # noqa: E402
from services.vision.metrics import auroc, paired_bootstrap, pixel_ap, pixel_auroc_and_pro  # noqa: E402

CLI = str(ROOT / ".venv" / "bin" / "linewatch")
AUTOENCODER = [str(SHARED / "weights" / "taef2_encoder.pth"), str(SHARED / "weights" / "taef2_decoder.pth")]
MEMBER_FLAGS: dict[str, list[str]] = {
    "patchcore": ["--layers", *LAYERS, "--coreset", "0.02"],
    "patchcore-unseen": ["--layers", *LAYERS, "--coreset", "0.02", "--holdout-unseen"],
    "destseg": ["--detector", "destseg"],
    "diffusion": ["--detector", "diffusion", "--autoencoder", *AUTOENCODER],
}
BOOTSTRAP = ("image_auroc", "pro", "pixel_ap")
COLUMNS = ("image_auroc", "pixel_auroc", "pro", "pixel_ap", "iap", "fpr", "fnr", "images_per_s")


def run(command: list[str], log: Path) -> str:
    with log.open("ab") as err:
        done = subprocess.run(command, stdout=subprocess.PIPE, stderr=err, cwd=ROOT, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command[:4])} ... failed (exit {done.returncode}); see {log}")
    return done.stdout.decode()


def common(name: str, out: Path) -> list[str]:
    return [
        *["--data", str(SETS[name]), "--category", name, "--out", str(out), "--weights", str(WEIGHTS)],
        *["--activation", "relu", "--image-size", "256", "--threads", "2"],
    ]


def ensure_member(name: str, member: str, models: Path, log: Path, diffusion_steps: int) -> Path:
    out = models / f"{name}-{member}"
    if not (out / "card.json").is_file():
        print(f"[{name}] training {member} ...", file=sys.stderr, flush=True)
        steps = ["--diffusion-steps", str(diffusion_steps)] if member == "diffusion" else []
        run([CLI, "train", *common(name, out), *MEMBER_FLAGS[member], *steps], log)
    return out


def build_ensemble(name: str, out: Path, members: list[Path], pass_share: float, log: Path) -> Path:
    command = [CLI, "train", "--detector", "ensemble", *common(name, out)]
    run([*command, "--members", *map(str, members), "--pass-share", str(pass_share)], log)
    return out


def evaluate(name: str, model: Path, log: Path) -> dict[str, Any]:
    data = ["--data", str(SETS[name]), "--category", name]
    out = run([CLI, "evaluate", "--model", str(model), *data, "--json", "--threads", "2"], log)
    result: dict[str, Any] = json.loads(out)
    card = json.loads((model / "card.json").read_text())
    result["fit_s"] = card["training"]["fit_seconds"]
    return result


def side(inspector: Inspector, name: str) -> dict[str, npt.NDArray[Any]]:
    scored = score_test_set(inspector, SETS[name], name, 8, progress=True)
    return {"scores": scored.scores, "labels": scored.labels, "maps": scored.maps.astype(np.float32),
            "masks": scored.masks}  # fmt: skip


def metrics(side: dict[str, npt.NDArray[Any]], idx: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
    _, pro = pixel_auroc_and_pro(side["maps"][idx], side["masks"][idx])
    return np.array(
        [
            auroc(side["scores"][idx], side["labels"][idx]),
            pro,
            pixel_ap(side["maps"][idx], side["masks"][idx]),
        ]
    )


def margin(name: str, ensemble: Path, baseline: Path, rounds: int, seed: int) -> list[dict[str, Any]]:
    ours, theirs = side(Inspector.load(ensemble), name), side(Inspector.load(baseline), name)
    everything = np.arange(len(ours["labels"]))
    point = metrics(ours, everything) - metrics(theirs, everything)
    bar = tqdm(total=rounds, desc=f"{name} bootstrap", unit="draw")

    def difference(idx: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
        bar.update()
        return metrics(ours, idx) - metrics(theirs, idx)

    draws = paired_bootstrap(difference, ours["labels"], rounds, seed)
    bar.close()
    rows = []
    for column, metric in enumerate(BOOTSTRAP):
        spread = draws[:, column]
        low, high = (float(v) for v in np.percentile(spread, [2.5, 97.5]))
        rows.append(
            {"metric": metric, "difference": round(float(point[column]), 5)}
            | {
                "bootstrap_sd": round(float(spread.std(ddof=1)), 5),
                "interval_95": [round(low, 5), round(high, 5)],
            }
            | {"share_ahead": round(float((spread > 0).mean()), 3)}
        )
    return rows


def good_frames(name: str, count: int) -> list[np.ndarray]:
    samples, _ = list_test_samples(SETS[name], name)
    goods = [load_image(s.path) for s in samples if not s.is_defective]
    return [goods[i % len(goods)] for i in range(count)]


def throughput(models: dict[str, Path], name: str, frames: int) -> list[dict[str, Any]]:
    """Good frames through each model at batch 8, in this process (2 torch threads)."""
    images = good_frames(name, frames)
    rows: list[dict[str, Any]] = []
    for label, path in models.items():
        inspector = Inspector.load(path)
        inspector.predict(images[:8])  # warm-up
        passed = 0
        began = time.perf_counter()
        for start in range(0, len(images), 8):
            inspector.predict(images[start : start + 8])
            if isinstance(inspector.model, EnsembleModel):
                passed += inspector.model.last_passed
        seconds = time.perf_counter() - began
        is_ensemble = isinstance(inspector.model, EnsembleModel)
        rows.append(
            {"model": label, "frames": len(images), "frames_per_s": round(len(images) / seconds, 2)}
            | {"passed_share": round(passed / len(images), 3) if is_ensemble else None}
        )
    base = float(rows[0]["frames_per_s"])
    for row in rows:
        row["share_of_first"] = round(float(row["frames_per_s"]) / base, 3)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    ap.add_argument("--models", type=Path, default=Path("/tmp/linewatch-ensemble-models"))
    ap.add_argument("--pass-share", type=float, default=0.05, help="the cascade's share of good frames")
    ap.add_argument("--diffusion", action="store_true", help="also the diffusion detector and its ensemble")
    ap.add_argument(
        "--diffusion-steps", type=int, default=2000, help="when the diffusion model is trained here"
    )
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--frames", type=int, default=200, help="good frames streamed for throughput")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "ensemble.json")
    args = ap.parse_args()
    torch.set_num_threads(2)
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    args.models.mkdir(parents=True, exist_ok=True)
    log = args.out.with_suffix(".log")
    began = time.time()
    results: dict[str, Any] = {"sets": {}, "pass_share": args.pass_share, "rounds": args.rounds}
    for name in args.sets:
        members = ["patchcore", "patchcore-unseen", "destseg"] + (["diffusion"] if args.diffusion else [])
        paths = {m: ensure_member(name, m, args.models, log, args.diffusion_steps) for m in members}
        ensemble_members = [paths["patchcore-unseen"], paths["destseg"]]
        models = {
            "PatchCore (defaults)": paths["patchcore"],
            "DeSTSeg": paths["destseg"],
            "ensemble PatchCore+DeSTSeg": build_ensemble(
                name, args.models / f"{name}-ensemble", ensemble_members, 1.0, log
            ),
            f"cascade {args.pass_share:.0%} PatchCore→DeSTSeg": build_ensemble(
                name, args.models / f"{name}-cascade", ensemble_members, args.pass_share, log
            ),
        }
        if args.diffusion:
            models["diffusion"] = paths["diffusion"]
            models["ensemble PatchCore+DeSTSeg+diffusion"] = build_ensemble(
                name, args.models / f"{name}-ensemble3", [*ensemble_members, paths["diffusion"]], 1.0, log
            )
        rows = []
        for label, path in models.items():
            print(f"[{name}] evaluating {label} ...", file=sys.stderr, flush=True)
            rows.append({"model": label} | evaluate(name, path, log))
        bootstrap = margin(
            name, models["ensemble PatchCore+DeSTSeg"], paths["patchcore"], args.rounds, args.seed
        )
        cascade_name = f"cascade {args.pass_share:.0%} PatchCore→DeSTSeg"
        speed = throughput(
            {k: models[k] for k in ("PatchCore (defaults)", cascade_name, "ensemble PatchCore+DeSTSeg")},
            name,
            args.frames,
        )
        results["sets"][name] = {"rows": rows, "margin_over_patchcore": bootstrap, "throughput": speed}
        print(f"\n{name}")
        print(" | ".join(["model", *COLUMNS, "peak RSS MB", "fit s"]))
        for row in rows:
            values = [f"{row[c]:.4f}" if isinstance(row[c], float) else str(row[c]) for c in COLUMNS]
            print(
                " | ".join(
                    [row["model"], *values, f"{row['peak_rss_mb_inference']:.0f}", f"{row['fit_s']:.0f}"]
                )
            )
        print("ensemble − PatchCore defaults:")
        for b in bootstrap:
            print(
                f"  {b['metric']}: {b['difference']:+.4f}"
                f" (s.d. {b['bootstrap_sd']:.4f}, 95% {b['interval_95']})"
            )
        print("good frames streamed:")
        for s in speed:
            print(
                f"  {s['model']}: {s['frames_per_s']} frames/s ({s['share_of_first']:.0%}),"
                f" passed {s['passed_share']}"
            )
    results["seconds"] = round(time.time() - began, 1)
    results["run_at"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
