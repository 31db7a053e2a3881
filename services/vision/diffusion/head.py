"""The segmentation head on the diffusion discrepancy (TDAD, DiffusionAD; seed 001).

The scaled discrepancy between a frame and its reconstruction fires wherever the denoiser redraws
a part imperfectly (edges, fine texture), not only on defects. A small head learns which
discrepancies are defects: synthetic defects (:mod:`services.vision.synthesis`) are drawn on half
of a sample of the good training images, every image is reconstructed once, and the head (DeSTSeg's
ASPP :class:`~services.vision.destseg.Segmenter`) is trained on what it sees there — per layer the
product of the frame's and the reconstruction's normalised features, plus the discrepancy map —
against the synthetic masks (focal + L1 loss, DeSTSeg's). Reconstruction is the expensive part, so
it is done once per image and the head's inputs are cached (float16) and turned and mirrored
while training;
the head itself trains in seconds. The best state on synthetic defects drawn on the held-out goods
(pixel AP) is kept. The map is then the head's probability.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from services.vision.destseg import Segmenter, focal_loss
from services.vision.diffusion.model import DiffusionModel
from services.vision.metrics import pixel_ap
from services.vision.synthesis import Synthesiser

RECONSTRUCT_CHUNK = 8
FOCAL_GAMMA = 4.0


@dataclass
class HeadTraining:
    images: int  # synthetic-defect images reconstructed for training (half of them clean)
    validation_images: int
    steps: int = 0
    best_step: int = 0
    best_pixel_ap: float = 0.0
    discrepancy_pixel_ap: float = 0.0  # the bare discrepancy map's on the same validation images
    reconstruct_seconds: float = 0.0
    seconds: float = 0.0
    losses: list[float] = field(default_factory=list)
    validation: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _inputs(
    model: DiffusionModel, images: torch.Tensor, desc: str, progress: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """The head's inputs (float16, (N, C, h, w)) and the scaled discrepancy maps (N, S, S) of uint8
    images, reconstructing each once."""
    inputs, discrepancies = [], []
    with torch.inference_mode():
        for chunk in tqdm(images.split(RECONSTRUCT_CHUNK), desc=desc, unit="batch", disable=not progress):
            pixels = chunk.float() / 255
            pixel_map, feature_map, ours, theirs = model._discrepancies(pixels, model.reconstruct(pixels))
            scaled = 0.5 * pixel_map / model.map_scale[0] + 0.5 * feature_map / model.map_scale[1]
            inputs.append(model.head_inputs(scaled, ours, theirs).half())
            discrepancies.append(scaled)
    return torch.cat(inputs), torch.cat(discrepancies)


def _draw(
    goods: torch.Tensor, foregrounds: torch.Tensor, synthesiser: Synthesiser, count: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` images from ``goods`` in turn, every other one with a synthetic defect."""
    generator = torch.Generator().manual_seed(seed)
    index = torch.arange(count) % goods.shape[0]
    drawn = synthesiser.apply(goods[index], generator, foregrounds[index])
    clean = torch.arange(count) % 2 == 1
    images = torch.where(clean.view(-1, 1, 1, 1), goods[index], drawn.images)
    masks = drawn.masks & ~clean.view(-1, 1, 1)
    return images, masks


def fit_head(
    model: DiffusionModel,
    goods: torch.Tensor,
    foregrounds: torch.Tensor,
    held_out: torch.Tensor,
    held_foregrounds: torch.Tensor,
    synthesiser: Synthesiser,
    progress: bool = True,
) -> HeadTraining:
    """Train ``model``'s segmentation head (``model.params.head_steps`` steps on
    ``head_images`` reconstructed images; see the module's docstring). The model gets the head
    (and its params the head's input channels) in place; it stays on the CPU."""
    p = model.params
    seed = p.seed + 31
    images, masks = _draw(goods, foregrounds, synthesiser, p.head_images, seed)
    val_count = max(2, min(2 * held_out.shape[0], p.head_images // 2))  # each held-out good twice, capped
    val_images, val_masks = _draw(held_out, held_foregrounds, synthesiser, val_count, seed + 1)
    began = time.perf_counter()
    inputs, _ = _inputs(model, images, "head: reconstructing", progress)
    val_inputs, val_discrepancy = _inputs(model, val_images, "head: validation", progress)
    info = HeadTraining(images=images.shape[0], validation_images=val_images.shape[0])
    info.reconstruct_seconds = round(time.perf_counter() - began, 2)
    grid = inputs.shape[-2:]
    truth = F.interpolate(masks.float().unsqueeze(1), size=grid, mode="area")
    size = val_masks.shape[-2:]
    if val_masks.any():
        info.discrepancy_pixel_ap = round(pixel_ap(val_discrepancy.numpy(), val_masks.numpy()), 5)
    torch.manual_seed(seed)
    head = Segmenter(inputs.shape[1], p.head_channels)
    optimiser = torch.optim.Adam(head.parameters(), lr=2e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=max(1, p.head_steps), eta_min=2e-5)
    generator = torch.Generator().manual_seed(seed + 2)
    best, best_state = -1.0, copy.deepcopy(head.state_dict())
    every = max(1, p.head_steps // 8)
    running: list[float] = []
    started = time.perf_counter()
    bar = tqdm(range(1, p.head_steps + 1), desc="head", unit="step", disable=not progress)
    for step in bar:
        head.train()
        index = torch.randint(0, inputs.shape[0], (min(p.batch_size, inputs.shape[0]),), generator=generator)
        x, y = inputs[index].float(), truth[index]
        turns = int(torch.randint(0, 4, (1,), generator=generator))  # the cache seen in 8 poses
        x, y = x.rot90(turns, (-2, -1)), y.rot90(turns, (-2, -1))
        if float(torch.rand(1, generator=generator)) < 0.5:
            x, y = x.flip(-1), y.flip(-1)
        prob = torch.sigmoid(head(x))
        loss = focal_loss(prob, y, FOCAL_GAMMA) + (prob - y).abs().mean()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        running.append(float(loss.detach()))
        if step % every == 0 or step == p.head_steps:
            head.eval()
            with torch.inference_mode():  # at the frame's size, like the bare discrepancy's
                probs = torch.cat(
                    [
                        torch.sigmoid(F.interpolate(head(c.float()), size=size, mode="bilinear"))[:, 0]
                        for c in val_inputs.split(16)
                    ]
                )
            metric = pixel_ap(probs.numpy(), val_masks.numpy()) if val_masks.any() else 0.0
            info.losses.append(round(sum(running) / len(running), 5))
            info.validation.append(round(metric, 5))
            running = []
            bar.set_postfix(loss=info.losses[-1], ap=info.validation[-1])
            if metric > best:
                best, info.best_step = metric, step
                best_state = copy.deepcopy(head.state_dict())
        info.steps = step
    bar.close()
    head.load_state_dict(best_state)
    model.segmenter = head.eval().requires_grad_(False)
    model.params = replace(p, head_in_channels=int(inputs.shape[1]))
    info.best_pixel_ap = round(best, 5)
    info.seconds = round(time.perf_counter() - started, 2)
    return info
