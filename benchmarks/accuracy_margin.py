"""How far can an accuracy difference between linewatch and the peer be trusted on this test set?

The accuracy targets compare single numbers measured on a few hundred test images. This script
scores the test set with a trained linewatch model and with anomalib (PaDiM by default, or
PatchCore), each measured by services/vision/metrics.py on its own 256x256 maps as in
engine_vs_anomalib.py, and then draws the test images again with replacement (within good and
defective, the same draw for both sides) ``--rounds`` times. Each draw gives one difference per
metric; their spread is the uncertainty of the measured difference, and the share of draws where
linewatch is at least as good says how often a test set like this one would rank it so.

    .venv/bin/python benchmarks/accuracy_margin.py --model MODEL_DIR --category magnetic_tile
    .venv/bin/python benchmarks/accuracy_margin.py --model MODEL_DIR --category magnetic_tile \\
        --peer-npz /tmp/padim_mt.npz      # reuse (or keep) the peer's scores and maps

The peer runs in its own environment (`.venv-bench`, see benchmarks/peer_anomalib.py) unless
``--peer-npz`` names a file it wrote before. Each draw recomputes every metric at full resolution
(about 1 s per side on magnetic tile), so 400 draws take about 14 minutes (4 on bottle). Prints one table and
writes benchmarks/results/accuracy_margin_<category>_<peer>.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
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
from engine_vs_anomalib import SETS, peer_command  # noqa: E402

from services.vision.evaluate import score_test_set  # noqa: E402
from services.vision.inspector import Inspector  # noqa: E402
from services.vision.metrics import auroc, paired_bootstrap, pixel_auroc_and_pro  # noqa: E402

METRICS = ("image_auroc", "pixel_auroc", "pro")  # the three the accuracy targets name
Side = dict[str, npt.NDArray[Any]]


def run_peer(model: str, category: str, coreset: float, npz: Path) -> None:
    command = peer_command(model, category, SETS[category], coreset, npz)
    print(f"running the peer: {' '.join(command)}", flush=True)
    subprocess.run(command, check=True)


def side_metrics(side: Side, indices: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
    pixel, pro = pixel_auroc_and_pro(side["maps"][indices], side["masks"][indices])
    return np.array([auroc(side["scores"][indices], side["labels"][indices]), pixel, pro])


def aligned(ours: Side, peer: Side) -> Side:
    """The peer's arrays in our image order (both name images "defect type/file name")."""
    where = {str(name): i for i, name in enumerate(peer["names"])}
    missing = [str(name) for name in ours["names"] if str(name) not in where]
    if missing or len(where) != len(ours["names"]):
        raise SystemExit(f"the two sides scored different images (e.g. {missing[:3]}); re-run the peer")
    order = np.array([where[str(name)] for name in ours["names"]])
    out = {key: peer[key][order] for key in ("scores", "labels", "maps", "masks")}
    if not np.array_equal(out["labels"], ours["labels"]):
        raise SystemExit("the two sides label the test images differently")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True, help="a trained linewatch model directory")
    ap.add_argument("--category", choices=sorted(SETS), default="magnetic_tile")
    ap.add_argument("--peer", choices=["padim", "patchcore"], default="padim")
    ap.add_argument("--coreset", type=float, default=0.05, help="the peer PatchCore's coreset ratio")
    ap.add_argument("--peer-npz", type=Path, default=None, help="peer scores and maps: read or written")
    ap.add_argument("--rounds", type=int, default=400, help="bootstrap draws")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(2)

    began = time.time()
    inspector = Inspector.load(args.model)
    scored = score_test_set(inspector, SETS[args.category], args.category, 8, progress=True)
    if scored.skipped:
        raise SystemExit(f"linewatch skipped {len(scored.skipped)} test images: {scored.skipped[:3]}")
    ours: Side = {"names": np.array(scored.names), "scores": scored.scores, "labels": scored.labels}
    ours |= {"maps": scored.maps.astype(np.float32, copy=False), "masks": scored.masks}

    with tempfile.TemporaryDirectory() as work:
        npz = args.peer_npz or Path(work) / f"peer-{args.peer}-{args.category}.npz"
        if not npz.exists():
            npz.parent.mkdir(parents=True, exist_ok=True)
            run_peer(args.peer, args.category, args.coreset, npz)
        with np.load(npz) as saved:
            peer = aligned(ours, {key: saved[key] for key in ("names", "scores", "labels", "maps", "masks")})
    peer["maps"] = peer["maps"].astype(np.float32)

    everything = np.arange(len(ours["labels"]))
    point_ours, point_peer = side_metrics(ours, everything), side_metrics(peer, everything)
    bar = tqdm(total=args.rounds, desc="bootstrap", unit="draw")

    def difference(indices: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
        bar.update()
        return side_metrics(ours, indices) - side_metrics(peer, indices)

    draws = paired_bootstrap(difference, ours["labels"], args.rounds, args.seed)
    bar.close()

    peer_name = "anomalib PaDiM" if args.peer == "padim" else f"anomalib PatchCore ({args.coreset:.1%})"
    rows: list[dict[str, Any]] = []
    lines: list[list[str]] = []
    for column, metric in enumerate(METRICS):
        ours_value, peer_value = float(point_ours[column]), float(point_peer[column])
        spread = draws[:, column]
        low, high = (float(v) for v in np.percentile(spread, [2.5, 97.5]))
        sd, share = float(spread.std(ddof=1)), float((spread >= 0).mean())
        rows.append(
            {"metric": metric, "linewatch": round(ours_value, 5), "peer": round(peer_value, 5)}
            | {"difference": round(ours_value - peer_value, 5), "bootstrap_sd": round(sd, 5)}
            | {"interval_95": [round(low, 5), round(high, 5)], "share_at_least_peer": round(share, 3)}
        )
        gap = f"{ours_value - peer_value:+.5f}"
        interval = f"[{low:+.4f}, {high:+.4f}]"
        lines.append(
            [
                metric,
                f"{ours_value:.5f}",
                f"{peer_value:.5f}",
                gap,
                f"{sd:.5f}",
                interval,
                f"{share:.1%}",
            ]
        )
    header = ["metric", "linewatch", "peer", "difference", "bootstrap s.d.", "95% interval", "draws ≥ peer"]
    print(f"\n{args.category}: linewatch ({args.model}) against {peer_name}, {args.rounds} paired draws")
    for line in [header, *lines]:
        print(" | ".join(line))

    result = {
        "category": args.category,
        "model": str(args.model),
        "model_version": inspector.card.version,
        "model_params": inspector.card.params,
        "peer": peer_name,
        "rounds": args.rounds,
        "seed": args.seed,
        "n_images": len(ours["labels"]),
        "n_defective": int(ours["labels"].sum()),
        "rows": rows,
        "seconds": round(time.time() - began, 1),
        "run_at": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }
    out = args.out or ROOT / "benchmarks" / "results" / f"accuracy_margin_{args.category}_{args.peer}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
