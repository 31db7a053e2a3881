"""Realistic defects from a handful of real ones, by blended latent diffusion (seed 002, AdaBLDM).

From a category's diffusion model of good parts and at most ``MAX_SEEDS`` real defect images with
their masks:

1. **Adaptation:** a LoRA adapter of the denoiser is trained on the seed defect images (lora.py), so
   that the model also knows what this category's defects look like.
2. **Trimap:** a seed's mask is randomly flipped, turned, scaled and moved until it lies inside the
   good image's foreground; the trimap is 1 on the moved defect, 0.5 on the rest of the part and 0
   on the background. The seed's defect pixels are moved alike and pasted on the good image.
3. **Blended denoising in three phases:** the pasted composite's latent is noised to ``start`` and
   denoised with DDIM. Phase 1 (the first ``free_share`` of the steps) denoises freely wherever the
   trimap is above 0 (the part), so the pasted defect settles into its surroundings, while the
   background is pinned to the good image noised alike; phase 2 blends in latent space inside the
   mask dilated by ``dilation`` latent cells (the good image's noised latent everywhere else); phase 3
   decodes and blends in pixel space: the generated pixels inside the mask, the good image's own
   pixels outside it. So every pixel outside the mask is the good image's, bit for bit, and the mask
   is exact.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from services.vision.dataset import DatasetError, list_test_samples
from services.vision.diffusion.model import DiffusionModel, add_noise, ddim_step
from services.vision.images import ImageError, load_image, load_mask
from services.vision.synthesis import SynthesisError

MAX_SEEDS = 10


@dataclass(frozen=True)
class GenerationParams:
    start: int = 400  # the noise step the pasted composite starts from
    ddim_steps: int = 10
    free_share: float = 0.3  # phase 1: the share of the steps denoised freely over the whole part
    dilation: int = 1  # latent cells the phase-2 blending region extends past the mask
    scale: tuple[float, float] = (0.7, 1.3)  # the seed mask's random scaling
    inside: float = 0.95  # least share of the moved mask that must lie on the part's foreground
    tries: int = 50
    adapter_steps: int = 150  # LoRA steps on the seed defects (0: generate with the good-part model)
    adapter_rank: int = 8

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class DefectSeed:
    name: str  # "defect type/file name"
    image: npt.NDArray[np.uint8]  # (S, S, 3) at the model's size
    mask: npt.NDArray[np.bool_]  # (S, S)


def load_seeds(data_root: Path, category: str, count: int, size: int) -> list[DefectSeed]:
    """``count`` (at most ``MAX_SEEDS``) defective test images with their masks, evenly spaced over
    the test set's defect types, resized to ``size``; the rest of the test set stays unseen."""
    if not 1 <= count <= MAX_SEEDS:
        raise SynthesisError(f"defect generation takes 1 to {MAX_SEEDS} real defect images, got {count}")
    samples, _ = list_test_samples(data_root, category)
    defective = [s for s in samples if s.is_defective and s.mask_path is not None]
    if not defective:
        raise DatasetError(f"no defective test image with a mask under {data_root}/{category}/test")
    picks = np.linspace(0, len(defective) - 1, min(count, len(defective))).round().astype(int)
    seeds = []
    for i in sorted(set(picks.tolist())):
        sample = defective[i]
        try:
            image = load_image(sample.path)
            mask = load_mask(sample.mask_path, image.shape[:2])
        except ImageError as err:
            raise SynthesisError(f"seed defect {sample.path} cannot be read: {err.reason}") from err
        image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
        small = cv2.resize(mask.astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST) > 0
        if small.any():
            seeds.append(
                DefectSeed(f"{sample.path.parent.name}/{sample.path.name}", image.astype(np.uint8), small)
            )
    if not seeds:
        raise SynthesisError("no seed defect keeps a mask at the model's size")
    return seeds


def trimap(mask: npt.NDArray[np.bool_], foreground: npt.NDArray[np.bool_]) -> npt.NDArray[np.float32]:
    """1 on the defect, 0.5 on the rest of the part, 0 on the background."""
    out = np.where(foreground, 0.5, 0.0).astype(np.float32)
    out[mask] = 1.0
    return out


def place(
    seed: DefectSeed, foreground: npt.NDArray[np.bool_], rng: np.random.Generator, params: GenerationParams
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.uint8]] | None:
    """The seed's mask and pixels randomly flipped, turned, scaled and moved so that the mask lies on
    the foreground (at least ``params.inside`` of it); None when no try fits."""
    size = seed.mask.shape[0]
    fg_ys, fg_xs = np.nonzero(foreground)
    if not len(fg_ys):
        return None
    for _ in range(params.tries):
        image, mask = seed.image, seed.mask
        if rng.random() < 0.5:
            image, mask = image[:, ::-1], mask[:, ::-1]
        ys, xs = np.nonzero(mask)
        centre = (float(xs.mean()), float(ys.mean()))
        angle = float(rng.integers(0, 4) * 90 + rng.uniform(-15, 15))
        matrix = cv2.getRotationMatrix2D(centre, angle, float(rng.uniform(*params.scale)))
        target = int(rng.integers(0, len(fg_ys)))  # the defect's centre goes to a point of the part
        matrix[:, 2] += (fg_xs[target] - centre[0], fg_ys[target] - centre[1])
        moved_mask = (
            cv2.warpAffine(
                np.ascontiguousarray(mask, dtype=np.uint8), matrix, (size, size), flags=cv2.INTER_NEAREST
            )
            > 0
        )
        area = int(moved_mask.sum())
        if area < 4 or (moved_mask & foreground).sum() < params.inside * area:
            continue
        moved = cv2.warpAffine(
            np.ascontiguousarray(image),
            matrix,
            (size, size),
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_REFLECT,
        )
        return moved_mask, moved.astype(np.uint8)
    return None


def _to_latent_mask(mask: npt.NDArray[np.floating[Any]] | npt.NDArray[np.bool_], side: int) -> torch.Tensor:
    tensor = torch.from_numpy(np.asarray(mask, dtype=np.float32))[None, None]
    return F.adaptive_max_pool2d(tensor, side)  # a latent cell counts when any of its pixels does


class DefectGenerator:
    """Generates a defect on a good image from one of ``seeds`` with ``model``'s denoiser (adapted to
    the seeds when the model holds the adapter :func:`fit_defect_adapter` trained)."""

    def __init__(self, model: DiffusionModel, seeds: list[DefectSeed], params: GenerationParams) -> None:
        if not seeds:
            raise SynthesisError("defect generation needs at least one seed defect")
        self.model = model.eval()
        self.seeds = seeds
        self.params = params

    @property
    def size(self) -> int:
        return self.model.image_size

    def generate(
        self, image: npt.NDArray[np.uint8], seed: int, foreground: npt.NDArray[np.bool_]
    ) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.bool_], str]:
        """(image with a defect, its exact mask, "diffusion:<seed defect>") for a good ``image`` at the
        model's size; pixels outside the mask are ``image``'s own."""
        return self.generate_batch([image], [seed], [foreground])[0]

    def _place(
        self, image: npt.NDArray[np.uint8], seed: int, foreground: npt.NDArray[np.bool_]
    ) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.uint8], DefectSeed]:
        if image.shape[:2] != (self.size, self.size):
            raise SynthesisError(f"the image is {image.shape[1]}x{image.shape[0]}, the model {self.size} px")
        rng = np.random.default_rng(seed)
        placed = None
        chosen = self.seeds[0]
        for _ in range(len(self.seeds)):
            chosen = self.seeds[int(rng.integers(0, len(self.seeds)))]
            placed = place(chosen, foreground, rng, self.params)
            if placed is not None:
                break
        if placed is None:  # the part is too small for every seed: anywhere on the image
            chosen = self.seeds[0]
            placed = place(chosen, np.ones_like(foreground), rng, self.params)
            if placed is None:
                raise SynthesisError(f"no seed defect fits a {self.size} px image")
        return placed[0], placed[1], chosen

    def generate_batch(
        self,
        images: list[npt.NDArray[np.uint8]],
        seeds: list[int],
        foregrounds: list[npt.NDArray[np.bool_]],
    ) -> list[tuple[npt.NDArray[np.uint8], npt.NDArray[np.bool_], str]]:
        """:meth:`generate` for several good images at once (one denoiser pass per DDIM step for
        the whole batch; each image keeps its own seed's placement and noise)."""
        placed = [self._place(i, s, f) for i, s, f in zip(images, seeds, foregrounds, strict=True)]
        p = self.params
        model = self.model

        def tensor(array: npt.NDArray[np.uint8]) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1))).float() / 255

        with torch.inference_mode():
            good = torch.stack([tensor(i) for i in images])
            composite = torch.stack(
                [
                    tensor(np.where(m[..., None], pasted, i))
                    for i, (m, pasted, _) in zip(images, placed, strict=True)
                ]
            )
            known, start_latent = model.to_latent(good), model.to_latent(composite)
            side = known.shape[-1]
            parts, regions = [], []
            for (mask, _, _), foreground in zip(placed, foregrounds, strict=True):
                parts.append(_to_latent_mask(trimap(mask, foreground) > 0, side))
                grown = cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
                regions.append(_to_latent_mask(grown, side))
            part, region = torch.cat(parts), torch.cat(regions)
            if p.dilation > 0:
                region = F.max_pool2d(region, 2 * p.dilation + 1, stride=1, padding=p.dilation)
            noise = torch.cat(
                [
                    torch.randn(known.shape[1:], generator=torch.Generator().manual_seed(s))[None]
                    for s in seeds
                ]
            )
            alphas = model.alphas
            count = len(images)
            x = add_noise(start_latent, noise, torch.full((count,), p.start), alphas)
            schedule = torch.linspace(p.start, 0, p.ddim_steps + 1).round().long().tolist()
            free = math.ceil(p.free_share * p.ddim_steps)
            for i, t in enumerate(schedule[:-1]):
                t_prev = int(schedule[i + 1]) if schedule[i + 1] > 0 else -1
                x, _ = ddim_step(x, model._eps(x, t), t, t_prev, alphas)
                background = (
                    add_noise(known, noise, torch.full((count,), t_prev), alphas) if t_prev >= 0 else known
                )
                keep = part if i < free else region  # phase 1: the whole part; phase 2: around the mask
                x = keep * x + (1 - keep) * background
            decoded = model.from_latent(x).clamp(0, 1)
        results = []
        for k, (mask, _, chosen) in enumerate(placed):
            generated = (decoded[k].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            out = np.where(mask[..., None], generated, images[k])  # phase 3: outside the mask, the good's
            results.append((out, mask, f"diffusion:{chosen.name}"))
        return results


def fit_defect_adapter(
    model: DiffusionModel,
    seeds: list[DefectSeed],
    params: GenerationParams,
    device: str = "cpu",
    progress: bool = True,
) -> DiffusionModel:
    """A copy of ``model`` with a LoRA adapter trained on the seed defect images (AdaBLDM's
    adaptation: the denoiser learns this category's defects from a handful of them)."""
    from dataclasses import replace

    from services.vision.diffusion.lora import LoraSettings
    from services.vision.diffusion.train import fit_adapter

    if model.params.lora is not None:
        raise SynthesisError("generate with the category's own diffusion model, not an adapter of it")
    images = torch.stack([torch.from_numpy(np.ascontiguousarray(s.image.transpose(2, 0, 1))) for s in seeds])
    settings = LoraSettings(name="defects", rank=params.adapter_rank, alpha=params.adapter_rank)
    training = replace(
        model.params, steps=params.adapter_steps, lr=1e-3, eval_every=max(1, params.adapter_steps // 3),
        batch_size=min(8, len(seeds) * 2),
    )  # fmt: skip
    adapted, _ = fit_adapter(
        model, images, images, settings, training, "seed defects", device, None, progress
    )
    return adapted
