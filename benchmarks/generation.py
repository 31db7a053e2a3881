"""Generated defects against Perlin-only synthesis: does DeSTSeg outline real defects better when its
segmentation head also learns from defects a diffusion model generated from a few real ones?

Per set, with trained models kept in ``--models`` between runs (missing ones are made here, by the
CLI a plant would use):

    <set>-diffusion          the category's diffusion model (linewatch train --detector diffusion)
    <set>-destseg            DeSTSeg at its defaults: Perlin-only synthesis, both stages
    <set>-generated/<cat>    linewatch synth --method diffusion --split train: ``--n`` defects
                             generated on the training goods from ``--seeds`` real test defects
    <set>-destseg-generated  the same student (--student-from <set>-destseg), a new segmentation
                             head trained with --generated (half its defects generated)

Both DeSTSeg models are scored on the test set without the seed defects (never seen by either);
the table gives image AUROC, pixel AUROC, PRO, pixel AP and IAP, and the paired bootstrap
(``--rounds`` draws of the same test images for both) the spread of the differences.

    .venv/bin/python benchmarks/generation.py [--sets magnetic_tile bottle] [--n 300] [--rounds 200]

Prints the table and writes benchmarks/results/generation.json.
"""

from __future__ import annotations

import argparse
import json
import os
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
from engine_vs_anomalib import SETS  # noqa: E402
from ensemble import CLI, MEMBER_FLAGS, common, run  # noqa: E402

from services.vision.evaluate import ScoredTestSet, score_test_set  # noqa: E402
from services.vision.inspector import Inspector  # noqa: E402
from services.vision.metrics import evaluate_detection, paired_bootstrap  # noqa: E402

COLUMNS = ("image_auroc", "pixel_auroc", "pro", "pixel_ap", "iap")
BOOTSTRAP = ("pixel_ap", "iap", "pro", "image_auroc")


def ensure(out: Path, command: list[str], log: Path, what: str) -> tuple[Path, float]:
    """Run ``command`` unless ``out`` holds its result; returns ``out`` and the seconds it took."""
    done = out / "card.json" if what != "synth" else out / "synthetic.json"
    if done.is_file():
        return out, 0.0
    print(f"[{what}] {' '.join(command[1:3])} -> {out}", file=sys.stderr, flush=True)
    began = time.perf_counter()
    run(command, log)
    return out, time.perf_counter() - began


def without(scored: ScoredTestSet, names: set[str]) -> dict[str, npt.NDArray[Any]]:
    keep = np.array([n not in names for n in scored.names])
    return {
        "scores": scored.scores[keep],
        "labels": scored.labels[keep],
        "maps": scored.maps[keep].astype(np.float32),
        "masks": scored.masks[keep],
    }


def metrics(side: dict[str, npt.NDArray[Any]], idx: npt.NDArray[np.int64]) -> dict[str, float]:
    return evaluate_detection(
        side["scores"][idx], side["labels"][idx], side["maps"][idx], side["masks"][idx], threshold=np.inf
    )


def bootstrap(
    ours: dict[str, npt.NDArray[Any]],
    theirs: dict[str, npt.NDArray[Any]],
    rows: list[dict[str, Any]],
    rounds: int,
    seed: int,
    name: str,
) -> list[dict[str, Any]]:
    """The paired-bootstrap spread of ours − theirs for each of ``BOOTSTRAP``."""
    bar = tqdm(total=rounds, desc=f"{name} bootstrap", unit="draw")

    def difference(idx: npt.NDArray[np.int64]) -> list[float]:
        bar.update()
        a, b = metrics(ours, idx), metrics(theirs, idx)
        return [a[m] - b[m] for m in BOOTSTRAP]

    draws = paired_bootstrap(difference, ours["labels"], rounds, seed)
    bar.close()
    margin = []
    for column, metric in enumerate(BOOTSTRAP):
        spread = draws[:, column]
        low, high = (float(v) for v in np.percentile(spread, [2.5, 97.5]))
        margin.append(
            {"metric": metric, "difference": round(rows[1][metric] - rows[0][metric], 5)}
            | {"bootstrap_sd": round(float(spread.std(ddof=1)), 5)}
            | {"interval_95": [round(low, 5), round(high, 5)]}
        )
    return margin


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", nargs="+", default=["magnetic_tile", "bottle"], choices=list(SETS))
    ap.add_argument("--models", type=Path, default=Path("/tmp/linewatch-generation-models"))
    ap.add_argument("--n", type=int, default=300, help="defects generated per set")
    ap.add_argument("--seeds", type=int, default=10, help="real defect images learned from (at most 10)")
    ap.add_argument("--share", type=float, default=0.5, help="share of the head's defects generated")
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "generation.json")
    args = ap.parse_args()
    torch.set_num_threads(2)
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    args.models.mkdir(parents=True, exist_ok=True)
    log = args.out.with_suffix(".log")
    results: dict[str, Any] = {"sets": {}, "n": args.n, "seeds": args.seeds, "share": args.share}
    for name in args.sets:
        models = args.models
        diffusion, diffusion_s = ensure(
            models / f"{name}-diffusion",
            [CLI, "train", *common(name, models / f"{name}-diffusion"), *MEMBER_FLAGS["diffusion"]],
            log,
            "train",
        )
        perlin, perlin_s = ensure(
            models / f"{name}-destseg",
            [CLI, "train", *common(name, models / f"{name}-destseg"), *MEMBER_FLAGS["destseg"]],
            log,
            "train",
        )
        synth_root = models / f"{name}-generated"
        synth_command = [
            *[CLI, "synth", "--data", str(SETS[name]), "--category", name, "--out", str(synth_root)],
            *["--method", "diffusion", "--model", str(diffusion), "--split", "train"],
            *["--n", str(args.n), "--seed-defects", str(args.seeds), "--no-goods", "--overwrite"],
        ]
        generated, synth_s = ensure(synth_root / name, synth_command, log, "synth")
        manifest = json.loads((generated / "synthetic.json").read_text())
        seed_names = set(manifest["generation"]["seed_defects"])
        mixed_out = models / f"{name}-destseg-generated"
        mixed, mixed_s = ensure(
            mixed_out,
            [
                *[CLI, "train", *common(name, mixed_out), *MEMBER_FLAGS["destseg"]],
                *["--student-from", str(perlin), "--generated", str(generated)],
                *["--generated-share", str(args.share)],
            ],
            log,
            "train",
        )
        sides = {}
        for label, path in (("Perlin only", perlin), ("Perlin + generated", mixed)):
            print(f"[{name}] scoring {label} ...", file=sys.stderr, flush=True)
            scored = score_test_set(Inspector.load(path), SETS[name], name, 8, progress=True)
            missing = seed_names - set(scored.names)
            if missing:
                raise SystemExit(f"seed defects {sorted(missing)} are not in the test set")
            sides[label] = without(scored, seed_names)
        ours, theirs = sides["Perlin + generated"], sides["Perlin only"]
        everything = np.arange(len(ours["labels"]))
        rows = [{"model": label} | metrics(side, everything) for label, side in sides.items()]
        margin = bootstrap(ours, theirs, rows, args.rounds, args.seed, name)
        mixed_card = json.loads((mixed / "card.json").read_text())
        results["sets"][name] = {
            "rows": [{k: (round(v, 5) if isinstance(v, float) else v) for k, v in r.items()} for r in rows],
            "generated_minus_perlin": margin,
            "test_images": len(ours["labels"]),
            "seed_defects": sorted(seed_names),
            "generated_used": mixed_card["training"].get("destseg", {}).get("generated"),
            "seconds": {
                "diffusion_fit": round(diffusion_s, 1),
                "destseg_fit": round(perlin_s, 1),
                "generation": round(synth_s, 1),
                "head_fit": round(mixed_s, 1),
            },
        }
        print(f"\n{name}: {len(ours['labels'])} test images, {len(seed_names)} seed defects left out")
        print(" | ".join(["model", *COLUMNS]))
        for row in rows:
            print(" | ".join([str(row["model"]), *(f"{row[c]:.4f}" for c in COLUMNS)]))
        print("generated − Perlin only:")
        for m in margin:
            spread = f"s.d. {m['bootstrap_sd']:.4f}, 95% {m['interval_95']}"
            print(f"  {m['metric']}: {m['difference']:+.4f} ({spread})")
    results["run_at"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
