"""PatchCore (Roth et al., CVPR 2022): a memory bank of good-part patch features, nearest-neighbour scoring.

The torch module is free of I/O: :class:`PatchCoreModel` maps a batch of normalised images to image
scores and anomaly maps; :func:`fit_patchcore` builds its memory bank from batches of good images.
"""

from __future__ import annotations

import itertools
import math
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from services.vision.backbone import FeatureExtractor
from services.vision.coreset import greedy_coreset
from services.vision.features import fuse_layers, random_projection, to_patches
from services.vision.knn import BfloatScreen, native_bfloat16, nearest, nearest_screened, squared_norms
from services.vision.maps import patch_scores_to_map
from services.vision.memory import release_free_memory


@dataclass(frozen=True)
class PatchCoreParams:
    neighbourhood: int = 3  # locally aware patch features: p x p average
    coreset_ratio: float = 0.02  # share of the candidate pool kept in the memory bank
    coreset_projection_dim: int = 32  # random projection used only to guide coreset selection
    projection_dim: int | None = None  # optional random projection of the stored features
    num_neighbours: int = 9  # support set of the image-score re-weighting (1 disables it)
    max_candidates: int = 250_000  # bound on patches gathered before the coreset (memory bound)
    layer_weights: tuple[float, ...] | None = None  # per-layer feature scale; None = balanced at fit
    sigma: float = 4.0  # Gaussian smoothing of the anomaly map, px at the model's input size
    # Share of a per-position Gaussian (PaDiM-style Mahalanobis distance) in the anomaly map and image
    # score; 0 = plain PatchCore. Both distances are divided by their spread on held-out good images.
    position_weight: float = 0.0
    position_eps: float = 0.02  # ridge added to every per-position covariance (0.01-0.05 tried)
    # how the two standardised distances combine (see blend_scores); cards written before there was
    # a choice load as "linear"
    blend: Literal["geometric", "linear"] = "geometric"
    # with position statistics, the image score is the mean of this share of the map's highest pixels
    image_top_share: float = 0.02
    seed: int = 0


class PatchCoreModel(nn.Module):
    memory_bank: torch.Tensor
    bank_squared: torch.Tensor
    projection: torch.Tensor
    position_mean: torch.Tensor
    position_precision: torch.Tensor
    score_norm: torch.Tensor

    def __init__(
        self,
        extractor: FeatureExtractor,
        memory_bank: torch.Tensor,
        image_size: int,
        params: PatchCoreParams,
        projection: torch.Tensor | None = None,
        position_mean: torch.Tensor | None = None,
        position_precision: torch.Tensor | None = None,
        score_norm: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.extractor = extractor
        self.image_size = image_size
        self.params = params
        self.register_buffer("memory_bank", memory_bank.float().contiguous())
        self.register_buffer("bank_squared", squared_norms(self.memory_bank))
        # the exact search is screened in bfloat16 where the CPU has bfloat16 matrix units
        self.screen = BfloatScreen.of(self.memory_bank) if native_bfloat16() else None
        self.register_buffer("projection", projection if projection is not None else torch.empty(0))
        if (position_mean is None) != (position_precision is None):
            raise ValueError("position_mean and position_precision come together")
        self.register_buffer("position_mean", _or_empty(position_mean))
        self.register_buffer(
            "position_precision",
            position_precision.half().contiguous() if position_precision is not None else torch.empty(0),
        )
        # spread (std) of the patch distances and of the position distances on held-out good images
        norm = score_norm if score_norm is not None else torch.ones(2)
        self.register_buffer("score_norm", norm.float())

    @property
    def uses_positions(self) -> bool:
        return self.params.position_weight > 0 and self.position_mean.numel() > 0

    def embed(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """(B, 3, S, S) → patch features (B, h*w, D) and the patch grid (h, w)."""
        return self._embed_maps(self.extractor(images))

    def _embed_maps(self, feature_maps: list[torch.Tensor]) -> tuple[torch.Tensor, tuple[int, int]]:
        fused = fuse_layers(feature_maps, self.params.neighbourhood, self.params.layer_weights)
        patches = to_patches(fused.float())
        if self.projection.numel():
            patches = patches @ self.projection
        return patches, (fused.shape[-2], fused.shape[-1])

    def component_scores(
        self, images: torch.Tensor, collect: PositionStatistics | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        """Raw patch distances (B, h*w), per-position Mahalanobis distances (B, h*w) (empty without
        position statistics) and the grid (h, w); the training code standardises them with these.
        The images' position features are added to ``collect`` when it is given."""
        feature_maps = self.extractor(images)
        if collect is not None:
            collect.add(position_features(feature_maps))
        patches, grid = self._embed_maps(feature_maps)
        batch, n_patches, dim = patches.shape
        distances, _ = self._nearest(patches.reshape(-1, dim))
        positions = (
            position_distances(position_features(feature_maps), self.position_mean, self.position_precision)
            if self.position_mean.numel()
            else torch.empty(0)
        )
        return distances.view(batch, n_patches), positions, grid

    def fold_scores(
        self, images: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple[int, int]]:
        """What :meth:`component_scores` returns and, third, the image scores the model gives without
        positions (PatchCore's re-weighted maximum): everything cross-fitting needs of an image
        before the position weight is chosen."""
        feature_maps = self.extractor(images)
        patches, grid = self._embed_maps(feature_maps)
        batch, n_patches, dim = patches.shape
        distances, where = self._nearest(patches.reshape(-1, dim))
        patch_scores = distances.view(batch, n_patches)
        plain = self._image_scores(patches, patch_scores, where.view(batch, n_patches))
        positions = (
            position_distances(position_features(feature_maps), self.position_mean, self.position_precision)
            if self.position_mean.numel()
            else torch.empty(0)
        )
        return patch_scores, positions, plain, grid

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Image scores (B,) and anomaly maps (B, S, S), both raw distances, and embeddings (B, D):
        the feature of each image's most anomalous patch.

        With position statistics (``position_weight`` > 0) the map is the weighted sum of the two
        standardised distances and the image score the mean of its highest ``image_top_share``."""
        scores, maps, embeddings, _ = self.score_with_residuals(images)
        return scores, maps, embeddings

    def score_with_residuals(
        self, images: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """What :meth:`forward` returns, and each patch's residual (B, D, h, w): its feature minus
        that of its nearest good patch in the memory bank. Pooled over a defect's region, the
        residual says what the defect adds to a good part, whatever part of the part it sits on;
        defects of one kind get similar residuals, which is what clustering them needs."""
        feature_maps = self.extractor(images)
        patches, (h, w) = self._embed_maps(feature_maps)
        batch, n_patches, dim = patches.shape
        distances, where = self._nearest(patches.reshape(-1, dim))
        patch_scores = distances.view(batch, n_patches)
        if self.uses_positions:
            positions = position_distances(
                position_features(feature_maps), self.position_mean, self.position_precision
            )
            image_scores, maps, grid_scores = self.blended_scores(patch_scores, positions, (h, w))
        else:
            grid_scores = patch_scores
            image_scores = self._image_scores(patches, patch_scores, where.view(batch, n_patches))
            maps = patch_scores_to_map(patch_scores.view(batch, h, w), self.image_size, self.params.sigma)
        embeddings = patches[torch.arange(batch), grid_scores.argmax(dim=1)]
        residuals = patches - self.memory_bank[where.view(batch, n_patches)]
        return image_scores, maps, embeddings, residuals.view(batch, h, w, dim).permute(0, 3, 1, 2)

    def blended_scores(
        self, patch_scores: torch.Tensor, position_scores: torch.Tensor, grid: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Image scores (B,), maps (B, S, S) and blended patch scores (B, h*w) from the two distances
        of :meth:`component_scores`, as :meth:`forward` makes them when the model uses positions."""
        weight = self.params.position_weight
        grid_scores = blend_scores(patch_scores, position_scores, self.score_norm, weight, self.params.blend)
        maps = patch_scores_to_map(grid_scores.view(-1, *grid), self.image_size, self.params.sigma)
        return top_share_mean(maps, self.params.image_top_share), maps, grid_scores

    def set_position_statistics(self, mean: torch.Tensor, precision: torch.Tensor) -> None:
        """Replace the per-position Gaussians (mean (P, C), precision (P, C, C)) with ones of the
        same shape, e.g. estimated on more images."""
        if mean.shape != self.position_mean.shape or precision.shape != self.position_precision.shape:
            raise ValueError(
                f"position statistics of shape {tuple(mean.shape)} / {tuple(precision.shape)} cannot replace"
                f" {tuple(self.position_mean.shape)} / {tuple(self.position_precision.shape)}"
            )
        self.position_mean = _or_empty(mean)
        self.position_precision = precision.half().contiguous()

    def _nearest(self, patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each patch's exact nearest bank entry: distances (Q, 1) and indices (Q, 1)."""
        if self.screen is not None:
            return nearest_screened(patches, self.memory_bank, self.screen)
        return nearest(patches, self.memory_bank, 1, self.bank_squared)

    def _image_scores(
        self, patches: torch.Tensor, patch_scores: torch.Tensor, where: torch.Tensor
    ) -> torch.Tensor:
        """Max patch score, re-weighted by how isolated its nearest bank entry is (PatchCore eq. 7)."""
        rows = torch.arange(patches.shape[0])
        worst = patch_scores.argmax(dim=1)
        scores = patch_scores[rows, worst]
        k = min(self.params.num_neighbours, self.memory_bank.shape[0])
        if k <= 1:
            return scores
        anchors = self.memory_bank[where[rows, worst]]
        _, support = nearest(anchors, self.memory_bank, k, self.bank_squared)
        support_distances = torch.linalg.vector_norm(
            patches[rows, worst].unsqueeze(1) - self.memory_bank[support], dim=2
        )
        weights = 1.0 - torch.softmax(support_distances, dim=1)[:, 0]
        return weights * scores


def _or_empty(tensor: torch.Tensor | None) -> torch.Tensor:
    return tensor.float().contiguous() if tensor is not None else torch.empty(0)


def position_features(feature_maps: list[torch.Tensor]) -> torch.Tensor:
    """PaDiM's embedding: the raw layers (no local averaging), deeper ones repeated (nearest) onto the
    finest grid, concatenated: (B, C, h, w) → (B, h*w, C)."""
    size = feature_maps[0].shape[-2:]
    layers = [
        fmap if fmap.shape[-2:] == size else F.interpolate(fmap, size=size, mode="nearest")
        for fmap in feature_maps
    ]
    return to_patches(torch.cat(layers, dim=1).float())


def position_distances(
    features: torch.Tensor, mean: torch.Tensor, precision: torch.Tensor, chunk: int = 128
) -> torch.Tensor:
    """Mahalanobis distance of every position's feature to that position's Gaussian: features
    (B, P, C), mean (P, C), precision (P, C, C), float16 or float32 (computed in float32, ``chunk``
    positions at a time) → (B, P)."""
    delta = (features - mean).transpose(0, 1)  # (P, B, C)
    squared = torch.empty(delta.shape[:2])
    for start in range(0, delta.shape[0], chunk):
        block = delta[start : start + chunk]
        inverse = precision[start : start + chunk].float()
        squared[start : start + chunk] = (torch.bmm(block, inverse) * block).sum(dim=2)
    return squared.clamp_min_(0).sqrt_().T


def blend_scores(
    patch_scores: torch.Tensor,
    position_scores: torch.Tensor,
    spreads: torch.Tensor,
    weight: float,
    blend: Literal["geometric", "linear"] = "geometric",
) -> torch.Tensor:
    """The two distances, each divided by its spread on held-out good images, combined with
    ``weight`` on the position distance: ``geometric``, ``patch^(1-weight) * position^weight`` (a
    region stands out where both distances rise, less where only one does; on painted defects it
    rates above the linear blend at every weight from 0.1 to 0.8 on magnetic tile), or ``linear``,
    ``(1-weight) * patch + weight * position`` (up to a constant the weighted sum of the two
    standardised scores). Both stay non-negative and give the patch distance at weight 0."""
    patch, position = patch_scores / spreads[0], position_scores / spreads[1]
    if blend == "geometric":
        return patch.pow(1.0 - weight) * position.pow(weight)
    if blend == "linear":
        return (1.0 - weight) * patch + weight * position
    raise ValueError(f"unknown blend {blend!r}: geometric or linear")


def top_share_mean(maps: torch.Tensor, share: float) -> torch.Tensor:
    """Mean of the highest ``share`` of each (B, H, W) map's pixels (at least one: the maximum).

    Less noisy than the single maximum: a defect lifts a region, noise a pixel or two."""
    return top_share_means(maps, [share])[:, 0]


def top_share_means(maps: torch.Tensor, shares: Sequence[float]) -> torch.Tensor:
    """:func:`top_share_mean` for several shares at once, (B, len(shares)): one ``topk`` for the
    largest share, whose sorted values give every smaller share's mean as a prefix."""
    flat = maps.flatten(1)
    counts = [max(1, min(flat.shape[1], round(share * flat.shape[1]))) for share in shares]
    top = flat.topk(max(counts), dim=1).values  # sorted, highest first
    return torch.stack([top[:, :k].mean(dim=1) for k in counts], dim=1)


class PositionStatistics:
    """Streaming per-position mean and covariance of (B, P, C) features, shifted by the first batch's
    mean so that float32 sums keep their precision. The sums of outer products are symmetric, so only
    their upper triangles are kept, packed: C(C+1)/2 numbers per position instead of C² (34 instead
    of 64 MB for 32x32 positions of 128 channels, held through the whole feature pass of a fit)."""

    def __init__(self, chunk: int = 128, shift: torch.Tensor | None = None) -> None:
        self.count = 0
        self.chunk = chunk  # positions whose full outer products are made at a time
        self.shift = self.total = self.outer = self.upper = torch.empty(0)
        self.fixed_shift = shift  # statistics to be merged later share one shift (see merged())

    @classmethod
    def merged(cls, parts: Sequence[PositionStatistics]) -> PositionStatistics:
        """The statistics of all the images of ``parts`` together (made with one shift); the parts
        are left as they were."""
        filled = [part for part in parts if part.count]
        if not filled:
            raise ValueError("no images in the position statistics to merge")
        first = filled[0]
        if any(part.shift is not first.shift and not torch.equal(part.shift, first.shift) for part in filled):
            raise ValueError("position statistics made with different shifts cannot be merged")
        if any(not part.outer.numel() for part in filled):
            raise ValueError("these position statistics were consumed by an earlier estimate")
        merged = cls(first.chunk, first.shift)
        merged.shift, merged.upper = first.shift, first.upper
        merged.total = torch.stack([part.total for part in filled]).sum(dim=0)
        merged.outer = first.outer.clone()
        for part in filled[1:]:
            merged.outer += part.outer
        merged.count = sum(part.count for part in filled)
        return merged

    def add(self, features: torch.Tensor) -> None:
        if self.count and not self.outer.numel():
            raise ValueError("these position statistics were consumed by an earlier estimate")
        if self.count == 0:
            self.shift = features.mean(dim=0) if self.fixed_shift is None else self.fixed_shift
            positions, channels = self.shift.shape
            rows, cols = torch.triu_indices(channels, channels)
            self.upper = rows * channels + cols  # flat indices of the upper triangle
            self.total = torch.zeros(positions, channels)
            self.outer = torch.zeros(positions, len(self.upper))
        centred = (features - self.shift).transpose(0, 1)  # (P, B, C)
        self.total += centred.sum(dim=1)
        for start in range(0, centred.shape[0], self.chunk):
            block = centred[start : start + self.chunk]
            products = torch.bmm(block.transpose(1, 2), block).flatten(1)  # (chunk, C*C)
            self.outer[start : start + self.chunk] += products.index_select(1, self.upper)
        self.count += features.shape[0]

    @contextmanager
    def parked(self) -> Iterator[None]:
        """Keep the sums of outer products in an anonymous temporary file instead of memory for the
        duration (34 MB for 32x32 positions of 128 channels): training holds them, unused, through
        the blend choice, which peaked highest of a fit's phases with them in memory."""
        if not self.outer.numel():
            yield
            return
        shape = self.outer.shape
        with tempfile.TemporaryFile(prefix="linewatch-statistics-") as spill:
            spill.write(self.outer.numpy().data)  # the tensor's own memory, not a copy of it
            self.outer = torch.empty(0)
            release_free_memory()
            try:
                yield
            finally:
                spill.seek(0)
                outer = torch.empty(shape)
                wanted = outer.numel() * outer.element_size()
                if spill.readinto(outer.numpy().data.cast("B")) != wanted:
                    raise OSError("the parked position statistics could not be read back in full")
                self.outer = outer

    def precision(self, eps: float, chunk: int = 64, keep: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean (P, C) and inverse covariance (P, C, C, float16), ridge ``eps``; the statistics are
        consumed unless ``keep`` (then more images can be added and the estimate made again)."""
        if self.count < 2:
            raise ValueError("position statistics need at least 2 images")
        if not self.outer.numel():
            raise ValueError("these position statistics were consumed by an earlier estimate")
        n = self.count
        positions, channels = self.total.shape
        centred_mean = self.total / n
        eye = eps * torch.eye(channels)
        precision = torch.empty(positions, channels, channels, dtype=torch.float16)
        with torch.inference_mode():  # the sums were made there
            for start in range(0, positions, chunk):
                packed = self.outer[start : start + chunk]
                block = torch.zeros(len(packed), channels * channels)
                block[:, self.upper] = packed
                block = block.view(-1, channels, channels)
                block = block + block.transpose(1, 2).tril(-1)  # the lower triangle from the upper
                m = centred_mean[start : start + chunk]
                cov = (block - n * m.unsqueeze(2) * m.unsqueeze(1)) / (n - 1) + eye
                precision[start : start + chunk] = torch.linalg.inv(cov.double()).half()
        if not keep:
            self.outer = torch.empty(0)
        return self.shift + centred_mean, precision  # stored float16, scored in float32


def balanced_layer_weights(channels: list[int]) -> tuple[float, ...]:
    """Scale each layer by sqrt(smallest channel count / its channel count).

    Concatenated as they are, a layer's share of a squared distance grows with its channel count
    (96 channels of features.13 against 32 of features.6 in MobileNetV2), and the deep, coarse layer
    then drowns the fine one that localises defects. The original PatchCore avoids this by pooling
    every layer to the same dimension; this scaling does the same at no cost. On the bottle images it
    lifts PRO from 0.930 to 0.942 and pixel AUROC from 0.981 to 0.986.
    """
    smallest = min(channels)
    return tuple(round(math.sqrt(smallest / count), 4) for count in channels)


@dataclass
class CandidatePool:
    """The patches a memory bank is chosen from (float16), their coreset guide (float32, projected),
    and the group each came from (the cross-fitting fold of its image; 0 when there are none): the
    shipped bank is chosen from all of them, each fold's from the others' (:meth:`fold_banks`)."""

    candidates: torch.Tensor  # (N, D) float16
    guide: torch.Tensor  # (N, guide_dim) float32
    groups: torch.Tensor  # (N,) int16
    params: PatchCoreParams  # with the balanced layer weights filled in
    projection: torch.Tensor | None

    def bank(self, progress: bool = True) -> torch.Tensor:
        """A coreset of all the pool's candidates, ``coreset_ratio`` of them, float32."""
        n_select = max(1, round(self.params.coreset_ratio * len(self.guide)))
        chosen = greedy_coreset(self.guide, n_select, None, self.params.seed, progress)
        return self.candidates[chosen].float()

    def fold_banks(self, folds: int, progress: bool = True) -> list[torch.Tensor]:
        """For each fold, a bank without its candidates: the union of the other folds' own coresets,
        each ``coreset_ratio`` of its fold's candidates chosen on that fold alone. k-center coresets
        compose (a union of the parts' coresets covers the whole about as well as a coreset of the
        whole), and five greedy runs on a fifth of the pool each cost a fifth of one run on all of
        it: the folds' banks cost about what the shipped bank does."""
        own: list[torch.Tensor] = []
        for fold in range(folds):
            rows = (self.groups == fold).nonzero()[:, 0]
            if not len(rows):
                raise ValueError(f"no candidate patches in group {fold}")
            n_select = max(1, round(self.params.coreset_ratio * len(rows)))
            own.append(rows[greedy_coreset(self.guide[rows], n_select, None, self.params.seed, progress)])
        return [
            self.candidates[torch.cat([own[g] for g in range(folds) if g != fold])].float()
            for fold in range(folds)
        ]


def gather_candidates(
    extractor: FeatureExtractor,
    batches: Iterable[tuple[torch.Tensor, Sequence[int]]],
    n_images: int,
    image_size: int,
    params: PatchCoreParams,
    on_features: Callable[[torch.Tensor, Sequence[int]], None] | None = None,
) -> CandidatePool:
    """One pass over batches of good images (normalised tensors, each with its images' groups):
    at most ``max_candidates / n_images`` random patches of every image into the pool, and each
    batch's position features (:func:`position_features`) to ``on_features`` with the groups."""
    generator = torch.Generator().manual_seed(params.seed)
    batch_iter = iter(batches)
    first = next(batch_iter, None)
    if first is None:
        raise ValueError("no training images could be used to build the memory bank")
    if params.layer_weights is None:
        with torch.inference_mode():
            channels = [fmap.shape[1] for fmap in extractor(first[0][:1])]
        params = replace(params, layer_weights=balanced_layer_weights(channels))
    probe = PatchCoreModel(extractor, torch.zeros(1, 1), image_size, params)
    projection: torch.Tensor | None = None
    guide_projection: torch.Tensor | None = None
    candidates = guide = groups = torch.empty(0)
    filled = 0
    with torch.inference_mode():
        for images, image_groups in itertools.chain([first], batch_iter):
            feature_maps = probe.extractor(images)
            if on_features is not None:
                on_features(position_features(feature_maps), image_groups)
            patches, _ = probe._embed_maps(feature_maps)
            del feature_maps
            _, n_patches, dim = patches.shape
            if filled == 0:
                if params.projection_dim and dim > params.projection_dim:
                    projection = random_projection(dim, params.projection_dim, params.seed)
                    dim = params.projection_dim
                guide_dim = min(dim, params.coreset_projection_dim)
                guide_projection = (
                    random_projection(dim, guide_dim, params.seed + 1) if guide_dim < dim else None
                )
                per_image = max(1, min(n_patches, params.max_candidates // max(n_images, 1)))
                candidates = torch.empty(n_images * per_image, dim, dtype=torch.float16)
                guide = torch.empty(n_images * per_image, guide_dim)
                groups = torch.empty(n_images * per_image, dtype=torch.int16)
            if projection is not None:
                patches = patches @ projection
            for image_patches, group in zip(patches, image_groups, strict=True):
                if filled + per_image > candidates.shape[0]:
                    raise ValueError(f"more than the announced {n_images} images were given")
                if per_image < n_patches:
                    image_patches = image_patches[torch.randperm(n_patches, generator=generator)[:per_image]]
                candidates[filled : filled + per_image] = image_patches
                guide[filled : filled + per_image] = (
                    image_patches @ guide_projection if guide_projection is not None else image_patches
                )
                groups[filled : filled + per_image] = int(group)
                filled += per_image
    if filled == 0:
        raise ValueError("no training images could be used to build the memory bank")
    return CandidatePool(candidates[:filled], guide[:filled], groups[:filled], params, projection)


def fit_patchcore(
    extractor: FeatureExtractor,
    batches: Iterable[torch.Tensor],
    n_images: int,
    image_size: int,
    params: PatchCoreParams,
    progress: bool = True,
    statistics: PositionStatistics | None = None,
) -> PatchCoreModel:
    """Build the memory bank from batches of good images (normalised tensors).

    With a position weight the per-position Gaussians are estimated too, in ``statistics`` when it
    is given (it is then kept, so that the caller can add images to it later), else in a fresh one.

    Memory stays bounded whatever the number of images: each image contributes at most
    ``max_candidates / n_images`` random patches, kept in float16, plus a float32 copy projected to
    ``coreset_projection_dim`` dimensions that guides the coreset selection.
    """
    keep_statistics = statistics is not None
    if params.position_weight <= 0:
        statistics = None
    elif statistics is None:
        statistics = PositionStatistics()
    collect = statistics.add if statistics is not None else None
    pool = gather_candidates(
        extractor,
        ((images, [0] * len(images)) for images in batches),
        n_images,
        image_size,
        params,
        (lambda features, _groups: collect(features)) if collect is not None else None,
    )
    bank = pool.bank(progress=progress)
    params, projection = pool.params, pool.projection
    del pool
    release_free_memory()  # the candidate pool's pages, before the statistics are inverted
    if statistics is None:
        return PatchCoreModel(extractor, bank, image_size, params, projection)
    mean, precision = statistics.precision(params.position_eps, keep=keep_statistics)
    return PatchCoreModel(extractor, bank, image_size, params, projection, mean, precision)
