"""Peer runner: Intel anomalib 2.7.0 PatchCore / PaDiM on an MVTec-layout folder.

Runs in its own virtual environment (never the product's .venv):

    python3.11 -m venv .venv-bench
    .venv-bench/bin/pip install --upgrade pip
    .venv-bench/bin/pip install torchvision==0.29.2 anomalib==2.7.0

torchvision 0.29.2 pulls torch 2.15.0 (do NOT pin torch: a local torch 2.13.0 CPU wheel would be
preferred and torchvision then fails with "operator torchvision::nms does not exist").
anomalib 2.7.0's core requirements already include everything PatchCore/PaDiM need at runtime
(lightning, torchmetrics, timm, kornia, freia, ...); torch/torchvision themselves sit in its
cpu/cu* extras, which the explicit torchvision install replaces. No other extra is needed.

Usage (run with the bench venv's python; see --help):

    .venv-bench/bin/python benchmarks/peer_anomalib.py --model padim \
        --data /work/shared/datasets/mvtec_bottle --category bottle \
        --weights /work/shared/weights/mobilenet_v2_imagenet_dequant.pth \
        --layers features.6 features.13 --image-size 256 --coreset 0.05 --threads 2 --out out.npz

PaDiM: anomalib has no n_features default for a module backbone; all 32+96=128 channels are kept
unless --n-features N picks a random subset (torch.manual_seed(--seed), as anomalib's randperm).

The anomalib torch models (PatchcoreModel / PadimModel) are driven directly, mirroring the Lightning
modules: training batches in train mode fill the memory bank, then ``fit()`` (coreset subsampling for
PatchCore, Gaussian fit for PaDiM), then eval mode gives anomaly maps (already Gaussian-blurred,
sigma=4, at input size) and raw image scores (no PostProcessor normalisation: AUROC is unaffected).
The backbone is passed as an nn.Module, so anomalib builds it with torchvision's
create_feature_extractor and never touches timm's/HF's download paths.
Pre-processing is anomalib's own default transform at 256x256: Resize (bilinear, antialias, no crop)
+ ImageNet Normalize, applied jointly to image and Mask (masks are resized nearest).

Memory caveat (glibc, not anomalib logic): k-center-greedy allocates per iteration an
(n_patches x n_proj) temporary and a new (n_patches x 1) min-distance tensor. With glibc's dynamic
mmap threshold these land on the heap, which can fragment so RSS grows by about one such block per
iteration: limited run (20 train images) 15-17 GB peak in 5 of 6 stock runs instead of ~1.6 GB; full
bottle ~+0.8 MB/iteration (10.7k iterations at 5 %). --mmap-threshold-kb 256 (glibc mallopt
M_MMAP_THRESHOLD) stops the growth; opt-in, the stock allocator is the default.
Timings are wall-clock on a shared machine: the load average is logged to stderr at start and end.

--save-bank / --load-bank keep a fitted PatchCore's memory bank so that a later process can skip
the fit, and --serve turns the runner into a worker of benchmarks/paired_throughput.py (one timed
batch-8 pass per line read on stdin). The glibc allocator matters for inference too: as shipped,
every batch of 8 maps and unmaps its activations (about 108,000 minor page faults per batch);
MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ raised keeps them, and batch 8 then runs about 2x
faster. The paired benchmark measures both.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import resource
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # belt and braces: nothing may be downloaded
os.environ.setdefault("TIMM_OFFLINE", "1")

import numpy as np
import torch
import torchvision
from anomalib.data.utils.image import read_image, read_mask
from anomalib.models.components import AnomalibModule
from anomalib.models.image.padim.torch_model import PadimModel
from anomalib.models.image.patchcore.torch_model import PatchcoreModel
from torch import nn
from torchvision.tv_tensors import Mask

IMG_EXT = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
TRAIN_BATCH = 32  # anomalib's default train_batch_size


def log(msg: str) -> None:
    print(f"[peer_anomalib] {msg}", file=sys.stderr, flush=True)


def load_backbone(weights: Path) -> nn.Module:
    """MobileNetV2 from a local state_dict, every ReLU6 replaced by ReLU, eval mode."""
    model = torchvision.models.mobilenet_v2()
    model.load_state_dict(torch.load(weights, map_location="cpu"), strict=True)

    def swap(module: nn.Module) -> None:
        for name, child in module.named_children():
            if isinstance(child, nn.ReLU6):
                setattr(module, name, nn.ReLU())
            else:
                swap(child)

    swap(model)
    assert not any(isinstance(m, nn.ReLU6) for m in model.modules())
    return model.eval()


def list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMG_EXT)


def subset(items: list, limit: int | None) -> list:
    """Evenly spaced subset of a sorted list, so a limited test set still spans all defect types."""
    if not limit or limit >= len(items):
        return items
    return [items[i] for i in np.linspace(0, len(items) - 1, limit).round().astype(int)]


def test_items(root: Path) -> list[tuple[Path, Path | None, int]]:
    """(image, mask or None, label) for every test image; masks matched by stem."""
    items: list[tuple[Path, Path | None, int]] = []
    for type_dir in sorted(d for d in (root / "test").iterdir() if d.is_dir()):
        for img in list_images(type_dir):
            if type_dir.name == "good":
                items.append((img, None, 0))
                continue
            gt = root / "ground_truth" / type_dir.name
            masks = [m for ext in (".png", ".jpg", ".bmp") if (m := gt / f"{img.stem}_mask{ext}").exists()]
            items.append((img, masks[0] if masks else None, 1))
    return items


class Prep:
    """anomalib's default pre-processor transform (Resize + ImageNet Normalize), per sample."""

    def __init__(self, size: int) -> None:
        self.transform = AnomalibModule.configure_pre_processor((size, size)).transform
        self.size = size

    def __call__(self, img_path: Path, mask_path: Path | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        image = read_image(img_path, as_tensor=True)  # PIL .convert("RGB") -> float [0,1]
        if mask_path is None:
            mask = Mask(torch.zeros(image.shape[-2:], dtype=torch.uint8))
        else:
            mask = read_mask(mask_path, as_tensor=True)
            if mask.shape[-2:] != image.shape[-2:]:
                log(f"warning: mask {mask_path.name} size {tuple(mask.shape)} != image {tuple(image.shape)}")
                mask = Mask(
                    torch.nn.functional.interpolate(mask[None, None].float(), image.shape[-2:])[0, 0] > 0
                )
        image, mask = self.transform(image[None], Mask(mask[None]))
        return image[0], mask[0].bool()


def build_model(kind: str, backbone: nn.Module, layers: list[str], n_features: int | None) -> nn.Module:
    if kind == "patchcore":
        return PatchcoreModel(layers=layers, backbone=backbone, pre_trained=False)  # num_neighbors=9 default
    # PaDiM has no n_features default for a non-named backbone: use all channels unless told otherwise
    probe = PadimModel(backbone=backbone, layers=layers, pre_trained=False, n_features=1)
    n_all = probe.n_features_original
    return PadimModel(backbone=backbone, layers=layers, pre_trained=False, n_features=n_features or n_all)


def fit(model: nn.Module, kind: str, prep: Prep, train: list[Path], coreset: float) -> float:
    """Feature extraction over the training set + coreset / Gaussian; returns seconds."""
    t0 = time.perf_counter()
    model.train()
    for i in range(0, len(train), TRAIN_BATCH):
        batch = torch.stack([prep(p)[0] for p in train[i : i + TRAIN_BATCH]])
        model(batch)
        log(f"train features {min(i + TRAIN_BATCH, len(train))}/{len(train)}")
    if kind == "patchcore":
        model.subsample_embedding(coreset)  # what Patchcore.fit() does
        log(f"memory bank {tuple(model.memory_bank.shape)}")
    else:
        model.fit()  # what Padim.fit() does
    model.eval()
    return time.perf_counter() - t0


@torch.inference_mode()
def infer(
    model: nn.Module, images: torch.Tensor, batch: int, repeats: int = 1
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Forward-only throughput over preprocessed tensors: one warm-up batch, then the fastest of
    ``repeats`` full passes (repeats > 1 only to damp noise from other processes)."""
    model(images[:batch])
    best = float("inf")
    for _ in range(repeats):
        scores, maps = [], []
        t0 = time.perf_counter()
        for i in range(0, len(images), batch):
            out = model(images[i : i + batch])
            scores.append(out.pred_score.reshape(-1))
            maps.append(out.anomaly_map.reshape(-1, *images.shape[-2:]))
        best = min(best, time.perf_counter() - t0)
    return torch.cat(scores), torch.cat(maps), len(images) / best


def serve(model: nn.Module, images: torch.Tensor, batch: int) -> None:
    """One timed pass over ``images`` per line on stdin, its images/s printed as one line."""
    infer(model, images, batch)  # warm-up pass, untimed here
    print("ready", flush=True)
    for _ in sys.stdin:
        _, _, rate = infer(model, images, batch)
        print(f"{rate:.3f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=["patchcore", "padim"], required=True)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--category", required=True)
    ap.add_argument("--weights", type=Path, required=True)
    ap.add_argument("--layers", nargs="+", default=["features.6", "features.13"])
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--coreset", type=float, default=0.05)
    ap.add_argument("--n-features", type=int, default=None, help="PaDiM random channel subset (default: all)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="scores, maps and masks (.npz); not with --serve")
    ap.add_argument("--limit-train", type=int, default=None)
    ap.add_argument("--limit-test", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=1, help="timed inference passes, fastest reported")
    ap.add_argument("--mmap-threshold-kb", type=int, default=0, help="glibc M_MMAP_THRESHOLD, e.g. 256")
    ap.add_argument("--save-bank", type=Path, default=None, help="PatchCore: save the fitted bank here")
    ap.add_argument(
        "--load-bank", type=Path, default=None, help="PatchCore: load a saved memory bank instead of fitting"
    )
    ap.add_argument(
        "--serve",
        action="store_true",
        help="after loading, time one batch-8 pass over the test images per line read on stdin "
        "(benchmarks/paired_throughput.py drives it); nothing else is measured or written",
    )
    args = ap.parse_args()
    if args.out is None and not args.serve:
        ap.error("--out is required unless --serve is given")
    if args.model != "patchcore" and (args.save_bank or args.load_bank):
        ap.error("--save-bank and --load-bank are for --model patchcore")

    if args.mmap_threshold_kb:
        ctypes.CDLL("libc.so.6").mallopt(-3, args.mmap_threshold_kb << 10)  # -3 = M_MMAP_THRESHOLD
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)  # PaDiM channel permutation, coreset start point
    root = args.data / args.category
    train = subset(list_images(root / "train" / "good"), args.limit_train)
    tests = subset(test_items(root), args.limit_test)
    log(
        f"torch {torch.__version__} threads={torch.get_num_threads()} train={len(train)} test={len(tests)} "
        f"loadavg={os.getloadavg()}"
    )

    model = build_model(args.model, load_backbone(args.weights), args.layers, args.n_features)
    prep = Prep(args.image_size)
    if args.load_bank:
        model.memory_bank = torch.load(args.load_bank)
        model.eval()
        fit_s = float("nan")
        log(f"memory bank {tuple(model.memory_bank.shape)} loaded from {args.load_bank}")
    else:
        fit_s = fit(model, args.model, prep, train, args.coreset)
        log(f"fit {fit_s:.1f}s")
    if args.save_bank:
        torch.save(model.memory_bank, args.save_bank)

    pairs = [prep(img, mask) for img, mask, _ in tests]
    images = torch.stack([p[0] for p in pairs])
    if args.serve:
        serve(model, images, batch=8)
        return
    masks = torch.stack([p[1] for p in pairs])
    labels = np.array([lab for _, _, lab in tests], dtype=np.int64)
    _, _, ips1 = infer(model, images, 1, args.repeats)
    scores, maps, ips8 = infer(model, images, 8, args.repeats)
    log(f"inference b1 {ips1:.2f} img/s, b8 {ips8:.2f} img/s, loadavg={os.getloadavg()}")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        args.out,
        scores=scores.float().numpy(),
        labels=labels,
        maps=maps.numpy().astype(np.float16),
        masks=masks.numpy().astype(bool),
        names=np.array([f"{img.parent.name}/{img.name}" for img, _, _ in tests]),
    )
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    coreset = args.coreset if args.model == "patchcore" else None
    result = {"model": args.model, "category": args.category, "coreset": coreset, "fit_s": round(fit_s, 3)}
    result |= {"images_per_s_b1": round(ips1, 3), "images_per_s_b8": round(ips8, 3)}
    result |= {"peak_rss_mb": round(peak_mb, 1), "n_train": len(train), "n_test": len(tests)}
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
