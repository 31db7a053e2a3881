"""Anomaly synthesis throughput against DeSTSeg's training step rate (256 px, CPU).

    .venv/bin/python benchmarks/synthesis.py [--images 256] [--threads 2]

Synthesis must never starve training: the images/s it draws (every image given a defect, the
worst case; training gives half of them one) should be at least 10x the images/s a DeSTSeg
training step consumes. Both are measured here in one process on the same cores: synthesis per
method and texture source on the bottle's good images, then a few steps of each DeSTSeg stage
(after one warm-up step). Prints a table and writes benchmarks/results/synthesis.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = Path(os.environ.get("LINEWATCH_SHARED", ROOT.parent / "shared"))

from services.vision.backbone import build_feature_extractor  # noqa: E402
from services.vision.destseg import DESTSEG_LAYERS, DestsegParams, fit_destseg  # noqa: E402
from services.vision.synthesis import Synthesiser, SynthesisSettings  # noqa: E402
from services.vision.train import TrainConfig, load_goods  # noqa: E402


def rate(
    synthesiser: Synthesiser, images: torch.Tensor, foregrounds: torch.Tensor, batch: int, share: float = 1.0
) -> float:
    generator = torch.Generator().manual_seed(0)
    for k in range(0, 4 * batch, batch):  # warm-up: first calls of each kernel
        synthesiser.apply(images[k : k + batch], generator, foregrounds[k : k + batch])
    started, done = time.perf_counter(), 0
    for k in range(0, images.shape[0], batch):
        synthesiser.apply(images[k : k + batch], generator, foregrounds[k : k + batch], share)
        done += min(batch, images.shape[0] - k)
    return done / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20, help="DeSTSeg steps timed per stage")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "synthesis.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = SHARED / "datasets" / "mvtec_bottle"
    paths = sorted((data / "bottle" / "train" / "good").iterdir())
    config = TrainConfig(data, "bottle", Path("unused"), image_size=256, progress=False)
    goods, foregrounds = load_goods(paths, config, [])
    reps = -(-args.images // goods.shape[0])
    images, fgs = goods.repeat(reps, 1, 1, 1)[: args.images], foregrounds.repeat(reps, 1, 1)[: args.images]
    batch = DestsegParams().batch_size
    rows: list[dict[str, Any]] = []
    for label, settings in [
        ("perlin, procedural + self (default)", SynthesisSettings()),
        ("perlin, procedural", SynthesisSettings(sources=("procedural",))),
        ("perlin, self", SynthesisSettings(sources=("self",))),
        ("paint", SynthesisSettings(method="paint")),
    ]:
        rows.append(
            {"synthesis": label, "images_per_s": round(rate(Synthesiser(settings), images, fgs, batch), 1)}
        )
        print(f"{label:<40} {rows[-1]['images_per_s']:>8.1f} images/s", flush=True)
    as_trained = rate(Synthesiser(), images, fgs, batch, DestsegParams().defect_probability)
    print(f"{'default, as DeSTSeg draws (half get one)':<40} {as_trained:>8.1f} images/s", flush=True)
    extractor = build_feature_extractor(
        "mobilenet_v2",
        DESTSEG_LAYERS["mobilenet_v2"],
        SHARED / "weights" / "mobilenet_v2_imagenet_dequant.pth",
        "relu",
    )
    params = DestsegParams(student_steps=args.steps + 1, segmentation_steps=args.steps + 1, eval_every=10_000)
    _, info = fit_destseg(
        extractor,
        goods[:64],
        foregrounds[:64],
        goods[64:72],
        foregrounds[64:72],
        256,
        params,
        Synthesiser(),
        device="cpu",
        progress=False,
    )
    # each stage's seconds include its one validation pass at the end; a step's images are the batch
    stage_rates = {
        stage: batch * result.steps / result.seconds
        for stage, result in (("student", info.student), ("segmentation", info.segmentation))
    }
    default_rate = rows[0]["images_per_s"]
    result = {
        "threads": args.threads,
        "image_size": 256,
        "batch_size": batch,
        "synthesis": rows,
        "training_images_per_s": {k: round(v, 1) for k, v in stage_rates.items()},
        "ratio_default_to_fastest_stage": round(default_rate / max(stage_rates.values()), 1),
        "images_per_s_as_trained": round(as_trained, 1),
        "ratio_as_trained_to_fastest_stage": round(as_trained / max(stage_rates.values()), 1),
    }
    for stage, value in stage_rates.items():
        print(f"DeSTSeg {stage:<14} {value:>8.1f} images/s ({value / batch:.2f} steps/s)")
    print(
        "synthesis (default, every image) / fastest training stage:"
        f" {result['ratio_default_to_fastest_stage']}x"
    )
    print(
        "synthesis (as DeSTSeg draws) / fastest training stage:"
        f" {result['ratio_as_trained_to_fastest_stage']}x"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
