"""Training a detector on good images: split, fit, calibrate on the held-out part, save the artifact."""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from tqdm import tqdm

from services.vision.artifact import ModelCard, TrainingInfo, now_iso, params_dict, save_artifact
from services.vision.backbone import build_feature_extractor, default_layers
from services.vision.calibration import fit_threshold
from services.vision.dataset import (
    DatasetError,
    Roi,
    SkippedFile,
    iter_batches,
    list_train_images,
    resize_for_model,
)
from services.vision.defects import DefectRules
from services.vision.images import ImageError, load_image
from services.vision.memory import release_free_memory
from services.vision.patchcore import PatchCoreModel, PatchCoreParams, fit_patchcore
from services.vision.position_choice import choose_blend
from services.vision.spade import SpadeParams, fit_spade

MIN_TRAIN_IMAGES = 8
AUTO_FIT_WEIGHT = 0.5  # position weight the model is fitted with before ``auto`` chooses the real one
MIN_AUTO_HOLDOUT = 20
"""``auto`` rates its candidates on this many held-out good images or more (and twice as many painted
copies); on fewer the ratings differ by noise alone, and plain PatchCore (weight 0) is kept."""
MAX_AUTO_GOODS = 120
"""``auto`` uses at most this many held-out good images (evenly spaced in the held-out list), so that
the images it keeps in memory (196 KB each at 256 px) and its time stay bounded on large sets."""


@dataclass
class TrainConfig:
    data_root: Path
    category: str
    out_dir: Path
    detector: str = "patchcore"
    backbone: str = "mobilenet_v2"
    weights: Path | None = None
    activation: str | None = None
    layers: list[str] | None = None
    image_size: int = 256
    coreset_ratio: float = 0.02
    # PatchCore: share of the per-position Gaussian score (0 = off; "auto": chosen on synthetic
    # defects painted on the held-out good images, 0 when fewer than MIN_AUTO_HOLDOUT are held out)
    position_weight: float | Literal["auto"] = "auto"
    layer_weights: tuple[float, ...] | None = None
    holdout: float = 0.15
    target_fpr: float = 0.01
    confidence: float = 0.9
    batch_size: int = 8
    roi: Roi | None = None
    seed: int = 0
    progress: bool = True
    defect_rules: DefectRules = field(default_factory=DefectRules)


def training_fingerprint(paths: list[Path]) -> str:
    """sha256 over each training file's name and content: identifies the data a model learned."""
    digest = hashlib.sha256()
    for path in sorted(paths, key=lambda p: p.name):
        digest.update(path.name.encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def split_holdout(paths: list[Path], share: float, seed: int) -> tuple[list[Path], list[Path]]:
    if len(paths) < MIN_TRAIN_IMAGES:
        raise DatasetError(f"only {len(paths)} training images; need at least {MIN_TRAIN_IMAGES}")
    shuffled = list(paths)
    random.Random(seed).shuffle(shuffled)
    n_holdout = min(len(paths) - 3, max(3, round(share * len(paths))))
    return sorted(shuffled[n_holdout:]), sorted(shuffled[:n_holdout])


def _batches(
    paths: list[Path], config: TrainConfig, skipped: list[SkippedFile], desc: str
) -> Iterator[torch.Tensor]:
    for batch in tqdm(
        iter_batches(paths, config.image_size, config.batch_size, skipped, config.roi),
        total=-(-len(paths) // config.batch_size),
        desc=desc,
        unit="batch",
        disable=not config.progress,
    ):
        yield batch.images


def score_spreads(model: PatchCoreModel, batches: Iterable[torch.Tensor]) -> torch.Tensor:
    """Standard deviations of the patch and the position distances over held-out good images."""
    patch, position = [], []
    with torch.inference_mode():
        for images in batches:
            patch_scores, position_scores, _ = model.component_scores(images)
            patch.append(patch_scores.flatten())
            position.append(position_scores.flatten())
    if not patch:
        raise DatasetError("no held-out image could be decoded, cannot standardise the scores")
    spreads = torch.stack([torch.cat(patch).std(), torch.cat(position).std()])
    return spreads.clamp_min(1e-6)


def choose_position_weight(
    model: PatchCoreModel, holdout_paths: list[Path], config: TrainConfig
) -> dict[str, Any]:
    """``--position-weight auto``: choose the weight and the image top share on the held-out good
    images and painted copies of them, set them on ``model`` (dropping the position statistics when
    the choice is 0) and return what was chosen and every candidate's scores, for the card."""
    if len(holdout_paths) > MAX_AUTO_GOODS:
        picks = np.linspace(0, len(holdout_paths) - 1, MAX_AUTO_GOODS).round().astype(int)
        holdout_paths = [holdout_paths[i] for i in picks]
    goods = []
    for path in holdout_paths:
        try:
            goods.append(resize_for_model(load_image(path), config.image_size, config.roi))
        except ImageError:  # already listed as skipped by the calibration pass
            continue
    choice = choose_blend(model, goods, config.seed, config.batch_size, config.progress)
    model.params = replace(
        model.params, position_weight=choice.position_weight, image_top_share=choice.image_top_share
    )
    if choice.position_weight == 0:
        model.position_mean, model.position_precision = torch.empty(0), torch.empty(0)
    return asdict(choice)


def train(config: TrainConfig) -> ModelCard:
    """Fit, calibrate and save a detector; returns its card. Unusable images are skipped and listed."""
    if config.position_weight not in (0, "auto") and config.detector != "patchcore":
        raise ValueError(f"the position weight is a PatchCore setting, not one of {config.detector}")
    started = time.perf_counter()
    paths = list_train_images(config.data_root, config.category)
    fit_paths, holdout_paths = split_holdout(paths, config.holdout, config.seed)
    layers = config.layers or default_layers(config.backbone)
    extractor = build_feature_extractor(config.backbone, layers, config.weights, config.activation)
    skipped: list[SkippedFile] = []
    batches = _batches(fit_paths, config, skipped, "features")
    model: torch.nn.Module
    params: PatchCoreParams | SpadeParams
    auto = config.position_weight == "auto" and config.detector == "patchcore"  # SPADE has no positions
    position_choice: dict[str, Any] | None = None
    if auto and len(holdout_paths) < MIN_AUTO_HOLDOUT:
        auto = False
        position_choice = {
            "position_weight": 0.0,
            "skipped": f"only {len(holdout_paths)} held-out good images; choosing the position weight"
            f" needs {MIN_AUTO_HOLDOUT}, so plain PatchCore is kept",
        }
    if config.detector == "patchcore":
        fixed = 0.0 if config.position_weight == "auto" else float(config.position_weight)
        params = PatchCoreParams(
            coreset_ratio=config.coreset_ratio,
            layer_weights=config.layer_weights,
            position_weight=AUTO_FIT_WEIGHT if auto else fixed,
            seed=config.seed,
        )
        patchcore = fit_patchcore(
            extractor, batches, len(fit_paths), config.image_size, params, config.progress
        )
        release_free_memory()  # each phase of the fit frees what it used; see memory.py
        if patchcore.position_mean.numel():
            patchcore.score_norm.copy_(
                score_spreads(patchcore, _batches(holdout_paths, config, [], "score spreads"))
            )
        if auto:
            release_free_memory()  # what the score spreads' pass freed
            position_choice = choose_position_weight(patchcore, holdout_paths, config)
        model, params = patchcore, patchcore.params  # as fitted, e.g. the balanced layer weights
    elif config.detector == "spade":
        params = SpadeParams(seed=config.seed)
        model = fit_spade(extractor, batches, len(fit_paths), config.image_size, params)
    else:
        raise ValueError(f"unknown detector {config.detector!r}; choose patchcore or spade")
    model.eval()
    release_free_memory()
    image_scores, map_maxima = [], []
    with torch.inference_mode():
        for images in _batches(holdout_paths, config, skipped, "calibration"):
            scores, maps, _ = model(images)
            image_scores.append(scores.numpy())
            map_maxima.append(maps.amax(dim=(1, 2)).numpy())
    if not image_scores:
        raise DatasetError("no held-out image could be decoded, cannot calibrate")
    image_calibration = fit_threshold(np.concatenate(image_scores), config.target_fpr, config.confidence)
    pixel_calibration = fit_threshold(np.concatenate(map_maxima), config.target_fpr, config.confidence)
    skipped_paths = {s.path for s in skipped}
    fit_seconds = time.perf_counter() - started
    fingerprint = training_fingerprint([p for p in paths if str(p) not in skipped_paths])
    created = now_iso()
    card_fields = {
        "name": f"{config.category}-{config.detector}",
        "version": created.replace("-", "").replace(":", "")[:15] + "-" + fingerprint[:8],
        "kind": config.detector,
        "backbone": config.backbone,
        "layers": layers,
        "activation": config.activation,
        "image_size": config.image_size,
        "roi": config.roi,
        "params": params_dict(params),
        "image_calibration": image_calibration,
        "pixel_calibration": pixel_calibration,
        "defect_rules": config.defect_rules,
        "training": TrainingInfo(
            data_root=str(config.data_root),
            category=config.category,
            n_images=len(paths) - len(skipped),
            n_fit=len([p for p in fit_paths if str(p) not in skipped_paths]),
            n_holdout=len([p for p in holdout_paths if str(p) not in skipped_paths]),
            skipped=[{"path": s.path, "reason": s.reason} for s in skipped],
            fingerprint=fingerprint,
            fit_seconds=round(fit_seconds, 2),
            created_at=created,
            position_choice=position_choice,
        ),
    }
    release_free_memory()
    return save_artifact(model, card_fields, config.out_dir)
