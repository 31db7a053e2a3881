"""Cross-fitted PatchCore: every good image calibrates, scored by a model fitted without it.

Holding 15% of ``train/good`` out leaves a small set's threshold resting on a handful of images (5
of a 30-image set), and its tolerance limit lands far above every good score: the threshold keeps
its false-alarm promise by missing most defects. Cross-fitting splits the good images into ``k``
folds; each fold is scored by a memory bank chosen from the other folds' patches (and per-position
Gaussians estimated on the other folds' images), so every image gets an out-of-sample score and the
thresholds rest on all of them. The shipped model is still fitted on every image.

One feature pass serves all folds: it gathers the candidate patches (tagged with their image's
fold) and each fold's position sums; a fold's bank is a coreset of the other folds' candidates and
its Gaussians the merged sums of the other folds. Scoring is one more pass over the images (each in
its own fold), with a copy of each carrying a painted defect (its donor texture from the same fold,
so no model has seen it): those give the miss-rate side of the operating curve and the images the
position weight is chosen on.

The guarantee: the scores of different folds come from different models, so they are not draws of
one model's score distribution, and the order-statistic bound of :mod:`calibration` holds only
approximately. Cross-conformal prediction (Vovk 2015; Barber et al. 2021, jackknife+) bounds the
worst case at twice the target false-alarm rate; each fold model is fitted on (k-1)/k of the images,
so its out-of-sample scores of good images tend to lie above the shipped model's, which errs on the
safe side. ``tests/vision/test_crossfit.py`` measures the rate on synthetic score distributions.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from services.vision.backbone import FeatureExtractor
from services.vision.dataset import DatasetError, Roi, SkippedFile, iter_batches, preprocess, resize_for_model
from services.vision.images import ImageError, load_image
from services.vision.maps import patch_scores_to_map
from services.vision.memory import release_free_memory
from services.vision.patchcore import (
    PatchCoreModel,
    PatchCoreParams,
    PositionStatistics,
    gather_candidates,
)
from services.vision.position_choice import METRIC_SIDE
from services.vision.synthesis import paint_defect

DEFAULT_FOLDS = 5
MIN_FOLD_IMAGES = 2  # a fold's painted copies take their donor texture from another image of the fold


def assign_folds(n: int, folds: int, seed: int) -> list[int]:
    """A fold for each of ``n`` images: shuffled with ``seed``, as even as can be."""
    if folds < 2:
        raise ValueError(f"cross-fitting needs 2 folds or more, got {folds}")
    if n < folds * MIN_FOLD_IMAGES:
        raise DatasetError(f"{n} good images are too few for {folds} folds (need {folds * MIN_FOLD_IMAGES})")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    fold_of = [0] * n
    for rank, index in enumerate(order):
        fold_of[index] = rank % folds
    return fold_of


class FoldStatistics:
    """Per-position sums for each fold, made with one shift so that any folds merge."""

    def __init__(self, folds: int) -> None:
        self.parts: list[PositionStatistics] = []
        self.folds = folds

    def add(self, features: torch.Tensor, groups: Sequence[int]) -> None:
        if not self.parts:
            shift = features.mean(dim=0)
            self.parts = [PositionStatistics(shift=shift) for _ in range(self.folds)]
        where = torch.as_tensor(list(groups))
        for fold in where.unique().tolist():
            self.parts[fold].add(features[where == fold])

    def without(self, fold: int | None) -> PositionStatistics:
        return PositionStatistics.merged([part for i, part in enumerate(self.parts) if i != fold])


@dataclass
class OutOfFold:
    """Out-of-sample scores of every usable good image and of a painted copy of each, each by the
    fold model that saw neither: patch and position distances (N, h*w) as
    :meth:`PatchCoreModel.fold_scores` gives them, the plain image scores (N,), and the painted
    copies' masks pooled to ``METRIC_SIDE``."""

    paths: list[Path]
    folds: list[int]
    patch: torch.Tensor
    position: torch.Tensor
    plain: torch.Tensor
    painted_patch: torch.Tensor
    painted_position: torch.Tensor
    painted_plain: torch.Tensor
    painted_masks: np.ndarray
    grid: tuple[int, int]

    def spreads(self) -> torch.Tensor:
        """Standard deviations of the goods' patch and position distances (the blend's units)."""
        position = self.position.std() if self.position.numel() else torch.tensor(1.0)
        return torch.stack([self.patch.std(), position]).clamp_min(1e-6)


def _paint(goods: list[np.ndarray], index: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Good image ``index`` of a fold with a painted defect, its donor another image of the fold."""
    rng = np.random.default_rng([seed, 7919, index])
    donor = (index + 1 + int(rng.integers(len(goods) - 1))) % len(goods)
    painted = paint_defect(goods[index], goods[donor], rng)
    return painted.image, painted.mask


def crossfit_patchcore(
    extractor: FeatureExtractor,
    paths: list[Path],
    image_size: int,
    params: PatchCoreParams,
    folds: int,
    roi: Roi | None,
    batch_size: int,
    skipped: list[SkippedFile],
    progress: bool = True,
) -> tuple[PatchCoreModel, OutOfFold, PositionStatistics | None]:
    """The model fitted on every image of ``paths`` and the out-of-fold scores of each; with a
    position weight, also the statistics of all images (the caller estimates the shipped Gaussians
    from them once it has chosen the weight). Unreadable files are appended to ``skipped``."""
    fold_of = assign_folds(len(paths), folds, params.seed)
    fold_by_path = {str(path): fold for path, fold in zip(paths, fold_of, strict=True)}
    statistics = FoldStatistics(folds) if params.position_weight > 0 else None
    loaded = tqdm(
        iter_batches(paths, image_size, batch_size, skipped, roi),
        total=-(-len(paths) // batch_size),
        desc="features",
        unit="batch",
        disable=not progress,
    )
    pool = gather_candidates(
        extractor,
        ((batch.images, [fold_by_path[str(p)] for p in batch.paths]) for batch in loaded),
        len(paths),
        image_size,
        params,
        statistics.add if statistics is not None else None,
    )
    params = pool.params  # the balanced layer weights
    release_free_memory()
    unreadable = {s.path for s in skipped}
    usable = [(path, fold) for path, fold in zip(paths, fold_of, strict=True) if str(path) not in unreadable]
    members_of = []
    for fold in range(folds):
        members = [path for path, f in usable if f == fold]
        if len(members) < MIN_FOLD_IMAGES:
            raise DatasetError(f"fold {fold} has {len(members)} readable images; need {MIN_FOLD_IMAGES}")
        members_of.append(members)
    fold_banks = pool.fold_banks(folds, progress=progress)
    bank = pool.bank(progress=progress)
    projection = pool.projection
    del pool
    release_free_memory()
    goods_out: list[OutOfFold] = []
    for fold, (members, fold_bank) in enumerate(zip(members_of, fold_banks, strict=True)):
        model = _fold_model(extractor, fold_bank, projection, statistics, fold, image_size, params)
        goods_out.append(_score_fold(model, members, fold, roi, batch_size, params.seed, progress))
        del model
        fold_banks[fold] = torch.empty(0)
        release_free_memory()
    final = PatchCoreModel(extractor, bank, image_size, params, projection)
    everything = statistics.without(None) if statistics is not None else None
    return final, _concatenate(goods_out), everything


def _fold_model(
    extractor: FeatureExtractor,
    bank: torch.Tensor,
    projection: torch.Tensor | None,
    statistics: FoldStatistics | None,
    fold: int,
    image_size: int,
    params: PatchCoreParams,
) -> PatchCoreModel:
    if statistics is None:
        return PatchCoreModel(extractor, bank, image_size, params, projection).eval()
    mean, precision = statistics.without(fold).precision(params.position_eps)
    return PatchCoreModel(extractor, bank, image_size, params, projection, mean, precision).eval()


def _score_fold(
    model: PatchCoreModel,
    paths: list[Path],
    fold: int,
    roi: Roi | None,
    batch_size: int,
    seed: int,
    progress: bool,
) -> OutOfFold:
    goods, kept = [], []
    for path in paths:
        try:
            goods.append(resize_for_model(load_image(path), model.image_size, roi))
            kept.append(path)
        except ImageError:  # read a moment ago for the features: changed since, left out here too
            continue
    if len(goods) < MIN_FOLD_IMAGES:
        raise DatasetError(f"fold {fold} has {len(goods)} readable images; need {MIN_FOLD_IMAGES}")
    painted = [_paint(goods, i, seed) for i in range(len(goods))]
    results: dict[str, list[torch.Tensor]] = {key: [] for key in ("patch", "position", "plain")}
    painted_results: dict[str, list[torch.Tensor]] = {key: [] for key in ("patch", "position", "plain")}
    grid = (0, 0)
    with torch.inference_mode():
        for images, into in ((goods, results), ([image for image, _ in painted], painted_results)):
            starts = range(0, len(images), batch_size)
            for start in tqdm(starts, desc=f"fold {fold + 1} scores", unit="batch", disable=not progress):
                batch = torch.stack(
                    [preprocess(image, model.image_size) for image in images[start : start + batch_size]]
                )
                patch, position, plain, grid = model.fold_scores(batch)
                into["patch"].append(patch)
                into["position"].append(position)
                into["plain"].append(plain)
                release_free_memory()
    masks = torch.from_numpy(np.stack([mask for _, mask in painted])).float().unsqueeze(1)
    pooled = F.adaptive_avg_pool2d(masks, METRIC_SIDE).squeeze(1).numpy() > 0
    return OutOfFold(
        kept,
        [fold] * len(kept),
        torch.cat(results["patch"]),
        torch.cat(results["position"]),
        torch.cat(results["plain"]),
        torch.cat(painted_results["patch"]),
        torch.cat(painted_results["position"]),
        torch.cat(painted_results["plain"]),
        pooled,
        grid,
    )


def _concatenate(parts: list[OutOfFold]) -> OutOfFold:
    return OutOfFold(
        [path for part in parts for path in part.paths],
        [fold for part in parts for fold in part.folds],
        torch.cat([part.patch for part in parts]),
        torch.cat([part.position for part in parts]),
        torch.cat([part.plain for part in parts]),
        torch.cat([part.painted_patch for part in parts]),
        torch.cat([part.painted_position for part in parts]),
        torch.cat([part.painted_plain for part in parts]),
        np.concatenate([part.painted_masks for part in parts]),
        parts[0].grid,
    )


def out_of_fold_scores(
    model: PatchCoreModel, scores: OutOfFold, chunk: int = 32
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """With the model's chosen blend: the goods' image scores and map maxima, and the painted
    copies' image scores, as the shipped model would compute them from the same distances."""
    goods_image: list[np.ndarray] = []
    goods_max: list[np.ndarray] = []
    painted_image: list[np.ndarray] = []
    with torch.inference_mode():
        for patch, position, plain, image_out, max_out in (
            (scores.patch, scores.position, scores.plain, goods_image, goods_max),
            (scores.painted_patch, scores.painted_position, scores.painted_plain, painted_image, None),
        ):
            for start in range(0, len(patch), chunk):
                part = slice(start, start + chunk)
                if model.uses_positions:
                    image, maps, _ = model.blended_scores(patch[part], position[part], scores.grid)
                else:
                    image = plain[part]
                    maps = patch_scores_to_map(
                        patch[part].view(-1, *scores.grid), model.image_size, model.params.sigma
                    )
                image_out.append(image.numpy())
                if max_out is not None:
                    max_out.append(maps.amax(dim=(1, 2)).numpy())
    return np.concatenate(goods_image), np.concatenate(goods_max), np.concatenate(painted_image)


def choice_subset(scores: OutOfFold, limit: int) -> list[int]:
    """At most ``limit`` goods, evenly spaced, for the position-weight choice (time stays bounded)."""
    n = len(scores.paths)
    if n <= limit:
        return list(range(n))
    return [int(i) for i in np.linspace(0, n - 1, limit).round()]
