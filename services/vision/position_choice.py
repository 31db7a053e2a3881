"""Choosing the per-position share of a PatchCore map without defect samples (``--position-weight auto``).

The blend ``(1-W)·patch + W·position`` and the image score's top share trade sensitivities against
each other, and the best values depend on the part: tiles that fill the frame gain from per-position
Gaussians, parts that move in the frame less. A plant has only good images, so the choice is made on
the held-out good images and copies of them with synthetic defects painted on
(:mod:`services.vision.synthesis`): every weight in ``WEIGHTS`` and share in ``TOP_SHARES``
is scored by the mean of image AUROC, pixel AUROC and PRO on that set, and the best pair is kept
(ties: the smaller weight). Both distances are computed once per image; each candidate only
re-blends them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from tqdm import tqdm

from services.vision.dataset import preprocess
from services.vision.maps import patch_scores_to_map
from services.vision.memory import release_free_memory
from services.vision.metrics import auroc, pixel_auroc_and_pro
from services.vision.patchcore import PatchCoreModel, blend_scores, top_share_means
from services.vision.synthesis import paint_defect

WEIGHTS: Final = tuple(round(0.1 * i, 1) for i in range(11))
TOP_SHARES: Final = (0.005, 0.01, 0.02, 0.05)
PAINTED_PER_IMAGE: Final = 2
METRIC_SIDE: Final = 64  # pixel metrics on maps pooled to this side: the ranking, at a small cost
MAP_CHUNK: Final = 32  # full-size maps made at a time (memory stays flat with many held-out images)


@dataclass(frozen=True)
class BlendChoice:
    position_weight: float
    image_top_share: float
    n_good: int
    n_painted: int
    table: list[dict[str, float]]  # per candidate: weight, top_share, image_auroc, pixel_auroc, pro, mean


def validation_image(
    goods: Sequence[npt.NDArray[np.uint8]], index: int, seed: int
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.bool_]]:
    """Image ``index`` of the validation set and its mask: the good images first (empty masks), then
    ``PAINTED_PER_IMAGE`` painted copies of each, every one drawn from its own seeded generator."""
    n = len(goods)
    if n < 2:
        raise ValueError(f"need 2 or more held-out good images to choose the position weight, got {n}")
    if index < n:
        return goods[index], np.zeros(goods[index].shape[:2], bool)
    rng = np.random.default_rng([seed, index])
    good = index % n
    donor = (good + 1 + int(rng.integers(n - 1))) % n
    painted = paint_defect(goods[good], goods[donor], rng)
    return painted.image, painted.mask


def _pool(maps: torch.Tensor, side: int = METRIC_SIDE) -> torch.Tensor:
    return F.adaptive_avg_pool2d(maps.unsqueeze(1), side).squeeze(1)


def choose_blend(
    model: PatchCoreModel,
    goods: Sequence[npt.NDArray[np.uint8]],
    seed: int = 0,
    batch_size: int = 8,
    progress: bool = False,
    good_scores: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> BlendChoice:
    """The position weight and image top share that best separate ``goods`` (held-out good images at
    the model's input size, RGB uint8) from painted copies of them. ``model`` needs its position
    statistics and score spreads fitted. ``good_scores``: the goods' patch and position distances
    (:meth:`PatchCoreModel.component_scores`) where the caller has them already; then only the
    painted copies are scored."""
    if not model.position_mean.numel():
        raise ValueError("the model has no position statistics to blend (fit it with a position weight)")
    total = len(goods) * (1 + PAINTED_PER_IMAGE)
    patch, position, masks = [], [], []
    first = 0
    if good_scores is not None:
        if not len(good_scores[0]) == len(good_scores[1]) == len(goods):
            raise ValueError(f"good_scores hold {len(good_scores[0])} images, not the {len(goods)} goods")
        patch, position = [good_scores[0]], [good_scores[1]]
        masks = [torch.zeros(len(goods), METRIC_SIDE, METRIC_SIDE, dtype=torch.bool)]
        first = len(goods)
    grid = (0, 0)
    with torch.inference_mode():
        starts = range(first, total, batch_size)
        for start in tqdm(starts, desc="choosing the position weight", unit="batch", disable=not progress):
            batch = [validation_image(goods, i, seed) for i in range(start, min(total, start + batch_size))]
            images = torch.stack([preprocess(image, model.image_size) for image, _ in batch])
            patch_scores, position_scores, grid = model.component_scores(images)
            patch.append(patch_scores)
            position.append(position_scores)
            release_free_memory()  # each batch's features (see memory.py)
            masks.append(_pool(torch.from_numpy(np.stack([mask for _, mask in batch])).float()) > 0)
        return rate_blends(
            model, torch.cat(patch), torch.cat(position), torch.cat(masks).numpy(), len(goods), grid
        )


def rate_blends(
    model: PatchCoreModel,
    patch_all: torch.Tensor,
    position_all: torch.Tensor,
    pooled_masks: npt.NDArray[np.bool_],
    n_goods: int,
    grid: tuple[int, int],
) -> BlendChoice:
    """Rate every candidate blend on images already scored: ``n_goods`` good images first, then the
    copies with synthetic defects, their patch and position distances (N, h*w) and their masks
    pooled to ``METRIC_SIDE``; ``model`` gives the score spreads, the blend and the map's size."""
    total = len(patch_all)
    labels = np.array([0] * n_goods + [1] * (total - n_goods))
    with torch.inference_mode():
        table = []
        for weight in WEIGHTS:
            blended = blend_scores(patch_all, position_all, model.score_norm, weight, model.params.blend)
            blended = blended.view(-1, *grid)
            pooled, tops = [], []
            for chunk in blended.split(MAP_CHUNK):
                maps = patch_scores_to_map(chunk, model.image_size, model.params.sigma)
                pooled.append(_pool(maps))
                tops.append(top_share_means(maps, TOP_SHARES))
            pooled_maps, image_scores = torch.cat(pooled).numpy(), torch.cat(tops).numpy()
            pixel, pro = pixel_auroc_and_pro(pooled_maps, pooled_masks)
            release_free_memory()  # each weight's maps and metric arrays: fragments otherwise pile up
            for column, share in enumerate(TOP_SHARES):
                image = auroc(image_scores[:, column], labels)
                mean = round((image + pixel + pro) / 3, 6)
                table.append(
                    {"weight": weight, "top_share": share, "image_auroc": image, "pixel_auroc": pixel}
                    | {"pro": pro, "mean": mean}
                )
    best = max(table, key=lambda row: (row["mean"], -row["weight"]))  # ties: the smaller weight
    return BlendChoice(best["weight"], best["top_share"], n_goods, total - n_goods, table)
