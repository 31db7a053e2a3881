"""Training the diffusion detector's denoiser on good images (DDPM noise prediction, EMA weights),
or a LoRA adapter of a trained one for another recipe, then setting the map scales on held-out good
images."""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from services.vision.backbone import FeatureExtractor
from services.vision.destseg import TrainingDiverged, resolve_device
from services.vision.diffusion.autoencoder import TinyAutoencoder
from services.vision.diffusion.lora import LoraSettings, activate, attach
from services.vision.diffusion.model import (
    DiffusionModel,
    DiffusionParams,
    add_noise,
    build_unet,
    unet_config,
)

CHUNK = 8  # images encoded or scored at a time


@dataclass
class DiffusionTraining:
    steps: int
    seconds: float
    device: str
    losses: list[float] = field(default_factory=list)  # mean training loss per evaluation interval
    validation: list[float] = field(default_factory=list)  # EMA loss on held-out latents
    best_step: int = 0
    map_scale: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _chunks(images: torch.Tensor) -> list[torch.Tensor]:
    return list(images.split(CHUNK))


def _encode(model: DiffusionModel, images: torch.Tensor) -> torch.Tensor:
    """uint8 images (N, 3, S, S) → the denoiser's latents, ``CHUNK`` at a time."""
    return torch.cat([model.to_latent(c.float() / 255) for c in _chunks(images)])


def _autocast(device: torch.device) -> Any:
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    from contextlib import nullcontext

    return nullcontext()


def fit_diffusion(
    extractor: FeatureExtractor,
    goods: torch.Tensor,
    held_out: torch.Tensor,
    image_size: int,
    params: DiffusionParams,
    autoencoder: TinyAutoencoder | None,
    device: str = "auto",
    checkpoint_dir: Path | None = None,
    progress: bool = True,
) -> tuple[DiffusionModel, DiffusionTraining]:
    """Train the denoiser on ``goods`` (uint8 (N, 3, S, S)), validating its noise-prediction loss on
    ``held_out`` every ``eval_every`` steps (the EMA weights; the best are kept and checkpointed),
    then measure the map scales on ``held_out``. Returns the model on the CPU, in eval mode."""
    if params.space == "latent" and autoencoder is None:
        raise ValueError("the latent space needs the autoencoder's weights (--autoencoder ENCODER DECODER)")
    if params.space == "latent" and image_size % 8:
        raise ValueError(f"the latent space needs an image size divisible by 8, got {image_size}")
    target = resolve_device(device)
    torch.manual_seed(params.seed)
    if params.space == "pixel":
        autoencoder = None
    in_channels = autoencoder.latent_channels if autoencoder is not None else 3
    side = image_size // 8 if params.space == "latent" else params.pixel_size
    unet = build_unet(params, in_channels, side)
    params = replace(params, unet_config=unet_config(unet))
    model = DiffusionModel(
        extractor, unet, autoencoder if params.space == "latent" else None, image_size, params
    )
    model.extractor.requires_grad_(False).eval()
    if model.autoencoder is not None:
        model.autoencoder.requires_grad_(False).eval()
    with torch.inference_mode():
        raw = _encode(model, goods)  # mean 0, std 1 yet
        mean, std = raw.mean(dim=(0, 2, 3)), raw.std(dim=(0, 2, 3)).clamp_min(1e-4)
        model.latent_mean.copy_(mean)
        model.latent_std.copy_(std)
        latents = (raw - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
        held = _encode(model, held_out)
    info = train_denoiser(
        model,
        latents,
        held,
        params,
        list(unet.parameters()),
        target,
        checkpoint_dir,
        progress,
        "diffusion denoiser",
    )
    scale = map_scales(model, held_out, progress)
    model.map_scale.copy_(scale)
    info.map_scale = [round(float(v), 6) for v in scale]
    return model, info


def fit_adapter(
    base: DiffusionModel,
    goods: torch.Tensor,
    held_out: torch.Tensor,
    settings: LoraSettings,
    params: DiffusionParams,
    base_version: str,
    device: str = "auto",
    checkpoint_dir: Path | None = None,
    progress: bool = True,
) -> tuple[DiffusionModel, DiffusionTraining]:
    """Train a LoRA adapter of ``base``'s denoiser on a recipe's ``goods`` (the base stays frozen;
    ``params`` gives the steps, batch, learning rate and EMA), then the recipe's map scales on
    ``held_out``. Returns a copy of ``base`` with the adapter attached and in use; ``base`` itself
    is not changed."""
    if base.params.lora is not None:
        raise ValueError("the base model is itself an adapter; adapt its own base")
    target = resolve_device(device)
    torch.manual_seed(params.seed)
    model = copy.deepcopy(base)
    model.params = replace(
        model.params,
        steps=params.steps,
        batch_size=params.batch_size,
        lr=params.lr,
        eval_every=params.eval_every,
        seed=params.seed,
    )
    base_sha = model.base_sha256()
    attach(model.unet, settings)
    activate(model.unet, settings.name)
    trainable = []
    for name, parameter in model.unet.named_parameters():
        parameter.requires_grad_("lora_" in name)
        if "lora_" in name:
            trainable.append(parameter)
    with torch.inference_mode():  # in the base's latent space: adapters share it
        latents = _encode(model, goods)
        held = _encode(model, held_out)
    info = train_denoiser(
        model, latents, held, model.params, trainable, target, checkpoint_dir, progress, "LoRA adapter"
    )
    scale = map_scales(model, held_out, progress)
    model.params = replace(
        model.params,
        lora={**settings.as_dict(), "base_denoiser_sha256": base_sha, "base_version": base_version},
    )
    model.register_adapter(settings, scale)
    model.use_adapter(settings.name)
    info.map_scale = [round(float(v), 6) for v in scale]
    return model, info


def train_denoiser(
    model: DiffusionModel,
    latents: torch.Tensor,
    held: torch.Tensor,
    params: DiffusionParams,
    trainable: list[torch.nn.Parameter],
    target: torch.device,
    checkpoint_dir: Path | None,
    progress: bool,
    desc: str,
) -> DiffusionTraining:
    """DDPM noise prediction on ``latents`` (normalised) for the ``trainable`` parameters of
    ``model.unet``, with EMA weights validated on ``held`` every ``eval_every`` steps; the best EMA
    state replaces ``model.unet`` (on the CPU, in eval mode) and is checkpointed while it trains."""
    unet = model.unet
    latents = latents.to(target)
    unet.to(target).train()
    ema = copy.deepcopy(unet).eval().requires_grad_(False)
    names = {id(p) for p in trainable}
    pairs = [(e, p) for e, p in zip(ema.parameters(), unet.parameters(), strict=True) if id(p) in names]
    optimiser = torch.optim.AdamW(trainable, lr=params.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimiser, T_max=params.steps, eta_min=params.lr * 0.02
    )
    alphas = model.alphas.to(target)
    generator = torch.Generator().manual_seed(params.seed + 1)
    fixed = torch.Generator().manual_seed(params.seed + 2)
    val_noise = torch.randn(held.shape, generator=fixed).to(target)
    val_t = torch.randint(0, params.train_timesteps, (held.shape[0],), generator=fixed).to(target)
    held = held.to(target)
    info = DiffusionTraining(steps=0, seconds=0.0, device=str(target))
    best, best_state = math.inf, copy.deepcopy(ema.state_dict())
    started = time.perf_counter()
    running: list[float] = []
    bar = tqdm(range(1, params.steps + 1), desc=desc, unit="step", disable=not progress)
    for step in bar:
        index = torch.randint(0, latents.shape[0], (params.batch_size,), generator=generator).to(target)
        x0 = latents[index]
        noise = torch.randn(x0.shape, generator=generator).to(target)
        t = torch.randint(0, params.train_timesteps, (x0.shape[0],), generator=generator).to(target)
        with _autocast(target):
            predicted = unet(add_noise(x0, noise, t, alphas), t).sample
        loss = F.mse_loss(predicted.float(), noise)
        if not torch.isfinite(loss):
            if checkpoint_dir is not None:
                _save(checkpoint_dir, best_state, info.best_step)
            where = (
                f"; the last good weights (step {info.best_step}) are kept in {checkpoint_dir}"
                if checkpoint_dir
                else ""
            )
            raise TrainingDiverged(f"diffusion loss became {loss.item()} at step {step}{where}")
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimiser.step()
        schedule.step()
        with torch.no_grad():
            decay = min(params.ema_decay, (1 + step) / (10 + step))
            for e, p in pairs:
                e.lerp_(p.detach(), 1 - decay)
        running.append(float(loss.detach()))
        info.steps = step
        if step % params.eval_every == 0 or step == params.steps:
            with torch.inference_mode(), _autocast(target):
                val = float(
                    F.mse_loss(
                        ema(add_noise(held, val_noise, val_t, alphas), val_t).sample.float(), val_noise
                    )
                )
            info.losses.append(round(sum(running) / len(running), 5))
            info.validation.append(round(val, 5))
            running = []
            bar.set_postfix(loss=info.losses[-1], val=info.validation[-1])
            if val < best:
                best, info.best_step = val, step
                best_state = copy.deepcopy(ema.state_dict())
                if checkpoint_dir is not None:
                    _save(checkpoint_dir, best_state, step)
    bar.close()
    ema.load_state_dict(best_state)
    model.unet = ema.to("cpu").eval()
    model.to("cpu").eval()
    model.extractor = model.extractor.to(memory_format=torch.channels_last)
    info.seconds = round(time.perf_counter() - started, 2)
    return info


def map_scales(model: DiffusionModel, held_out: torch.Tensor, progress: bool = False) -> torch.Tensor:
    """The 99th percentiles of the pixel and the feature discrepancy over held-out good images."""
    pixel_values, feature_values = [], []
    with torch.inference_mode():
        for chunk in tqdm(_chunks(held_out), desc="map scales", unit="batch", disable=not progress):
            pixels = chunk.float() / 255
            pixel_map, feature_map = model.discrepancies(pixels, model.reconstruct(pixels))
            pixel_values.append(pixel_map.flatten()[::7])
            feature_values.append(feature_map.flatten()[::7])
    return torch.stack(
        [torch.cat(pixel_values).quantile(0.99), torch.cat(feature_values).quantile(0.99)]
    ).clamp_min(1e-6)


def _save(folder: Path, state: dict[str, torch.Tensor], step: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / "denoiser.tmp"
    torch.save({"step": step, "state": {k: v.detach().cpu() for k, v in state.items()}}, tmp)
    tmp.replace(folder / "denoiser.pt")
