"""The diffusion-reconstruction detector: a denoising model of good parts that redraws each frame as
a good part would look, and a map of where the frame departs from its redrawing (seeds 000, 001).

- **Denoiser:** diffusers' ``UNet2DModel`` trained with DDPM (noise prediction, linear or cosine
  schedule) on a category's good images, in the latent space of the tiny pretrained autoencoder
  (TAEF2: 32 channels at 1/8 of the side, normalised per channel with the training latents' mean
  and spread) or in pixel space at a reduced size. EMA weights are what is kept.
- **Reconstruction, two stages (TDAD):** the frame's latent is noised to a low step ``t1`` and
  denoised back with DDIM, each step's noise estimate corrected towards the frame itself (DDAD's
  conditioning, ``eps - w * sqrt(1 - abar_t) * (y_t - x_t)`` with ``y_t`` the frame noised alike),
  so normal content is kept and a defect, treated as noise, is removed. Stage 2 starts again from
  a higher step ``t2``, conditioned on a fusion of the frame and the first reconstruction (the
  first reconstruction where the two disagree, the frame elsewhere). Sampling stops early once the
  predicted clean latent stops changing. The noise is one fixed draw per model (seeded), the same
  for every frame, so a frame's score does not depend on the batch it arrives in.
- **Map:** the discrepancy between frame and reconstruction in pixels (channel mean of absolute
  differences) and in pretrained features (1 - cosine at three scales), each divided by its 99th
  percentile on held-out good images, averaged, smoothed; the image score is the mean of its top 1%.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal, cast

import torch
import torch.nn.functional as F
from torch import nn

from services.vision.backbone import FeatureExtractor
from services.vision.destseg import Segmenter, product_features
from services.vision.diffusion.autoencoder import TinyAutoencoder
from services.vision.diffusion.lora import (
    AdapterError,
    LoraSettings,
    activate,
    attach,
    base_state,
    load_adapter_state,
    state_sha256,
)
from services.vision.maps import gaussian_blur

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
Schedule = Literal["linear", "cosine"]
SCHEDULER_NAMES = {"linear": "linear", "cosine": "squaredcos_cap_v2"}
# frames at a time through the full-resolution parts (the autoencoder, the feature discrepancies):
# their activations at 256 px dominate the stage's peak memory, and on a CPU they gain little from
# larger batches; the denoiser, on 1/8-size latents, still sees the whole batch
FULL_SIZE_CHUNK = 2


@dataclass(frozen=True)
class DiffusionParams:
    space: Literal["latent", "pixel"] = "latent"
    pixel_size: int = 64  # the side the denoiser sees in pixel space
    channels: tuple[int, ...] = (64, 128, 128)  # UNet block widths (one down/up block each)
    layers_per_block: int = 1
    schedule: Schedule = "linear"
    train_timesteps: int = 1000
    steps: int = 2000
    batch_size: int = 16
    lr: float = 5e-4
    ema_decay: float = 0.995
    t1: int = 150  # stage 1 starts from this noise step (low noise: defects are "noise")
    t2: int = 300  # stage 2, higher, conditioned on the frame fused with the first reconstruction
    ddim_steps: int = 6  # DDIM steps per stage
    guidance: float = 2.0  # DDAD's w: how strongly each step is pulled towards the condition
    stop_tolerance: float = 1e-3  # relative change of the predicted clean latent that ends a stage
    image_top_share: float = 0.01
    sigma: float = 4.0
    eval_every: int = 250
    # the segmentation head on the discrepancy (head.py): steps (0: none, the map is the scaled
    # discrepancy), synthetic-defect images reconstructed to train it, its width and its input
    # channels (set at fit time; 0 in a model without a head)
    head_steps: int = 400
    head_images: int = 192
    head_channels: int = 32
    head_in_channels: int = 0
    seed: int = 0
    unet_config: dict[str, Any] = field(default_factory=dict)  # diffusers' config, set at fit time
    # a LoRA adapter's settings (lora.py), the sha256 and version of the base it adapts; None: a base
    lora: dict[str, Any] | None = None


def scheduler_alphas(params: DiffusionParams) -> torch.Tensor:
    """The cumulative products of (1 - beta) of the training schedule, (T,) float64."""
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(
        num_train_timesteps=params.train_timesteps, beta_schedule=SCHEDULER_NAMES[params.schedule]
    )
    alphas: torch.Tensor = getattr(scheduler, "alphas_cumprod")  # noqa: B009  (untyped in diffusers)
    return alphas.to(torch.float64)


def add_noise(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, alphas: torch.Tensor) -> torch.Tensor:
    """q(x_t | x_0): ``sqrt(abar_t) x0 + sqrt(1 - abar_t) noise`` (``t`` per sample)."""
    abar = alphas[t].to(x0.dtype).view(-1, *([1] * (x0.ndim - 1)))
    return abar.sqrt() * x0 + (1 - abar).sqrt() * noise


def ddim_step(
    x_t: torch.Tensor, eps: torch.Tensor, t: int, t_prev: int, alphas: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One deterministic DDIM step (eta 0) from ``t`` to ``t_prev`` (-1: to the clean sample):
    returns x_{t_prev} and the predicted clean sample."""
    abar_t = float(alphas[t])
    abar_prev = float(alphas[t_prev]) if t_prev >= 0 else 1.0
    x0 = (x_t - (1 - abar_t) ** 0.5 * eps) / abar_t**0.5
    return abar_prev**0.5 * x0 + (1 - abar_prev) ** 0.5 * eps, x0


def build_unet(params: DiffusionParams, in_channels: int, sample_size: int) -> nn.Module:
    from diffusers import UNet2DModel

    if params.unet_config:
        return cast(nn.Module, UNet2DModel.from_config(params.unet_config))
    blocks = len(params.channels)
    return cast(
        nn.Module,
        UNet2DModel(
            sample_size=sample_size,
            in_channels=in_channels,
            out_channels=in_channels,
            layers_per_block=params.layers_per_block,
            block_out_channels=params.channels,
            down_block_types=("DownBlock2D",) * blocks,
            up_block_types=("UpBlock2D",) * blocks,
            norm_num_groups=min(32, min(params.channels)),
        ),
    )


def unet_config(unet: nn.Module) -> dict[str, Any]:
    """The UNet's diffusers config as plain JSON values (for the model card)."""
    config = dict(getattr(unet, "config"))  # noqa: B009  (diffusers' FrozenDict, not typed)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in config.items() if not k.startswith("_")}


class DiffusionModel(nn.Module):
    full_size_chunk = FULL_SIZE_CHUNK  # benchmarks/diffusion_stage.py compares larger ones
    latent_mean: torch.Tensor
    latent_std: torch.Tensor
    map_scale: torch.Tensor
    noise: torch.Tensor
    alphas: torch.Tensor

    def __init__(
        self,
        extractor: FeatureExtractor,
        unet: nn.Module,
        autoencoder: TinyAutoencoder | None,
        image_size: int,
        params: DiffusionParams,
        latent_mean: torch.Tensor | None = None,
        latent_std: torch.Tensor | None = None,
        map_scale: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.extractor = extractor
        self.unet = unet
        self.autoencoder = autoencoder
        self.image_size = image_size
        self.params = params
        channels = autoencoder.latent_channels if autoencoder is not None else 3
        self.register_buffer("latent_mean", latent_mean if latent_mean is not None else torch.zeros(channels))
        self.register_buffer("latent_std", latent_std if latent_std is not None else torch.ones(channels))
        # 99th percentiles of the pixel and feature discrepancies on held-out good images
        self.register_buffer("map_scale", map_scale if map_scale is not None else torch.ones(2))
        side = self.latent_side
        generator = torch.Generator().manual_seed(params.seed)
        self.register_buffer(
            "noise", torch.randn(1, channels, side, side, generator=generator), persistent=False
        )
        self.register_buffer("alphas", scheduler_alphas(params).float(), persistent=False)
        # LoRA adapters by name, each with the map scales of its recipe; the base's are kept apart
        self.adapters: dict[str, tuple[LoraSettings, torch.Tensor]] = {}
        self.base_map_scale: torch.Tensor | None = None  # kept when the first adapter comes
        self.active_adapter: str | None = None
        # the segmentation head (head.py), when one was trained: the map is its probability
        self.segmenter: Segmenter | None = (
            Segmenter(params.head_in_channels, params.head_channels) if params.head_in_channels else None
        )

    @property
    def latent_side(self) -> int:
        return self.image_size // 8 if self.autoencoder is not None else self.params.pixel_size

    # --- adapters (lora.py) ---

    def base_sha256(self) -> str:
        """Identifies the base denoiser an adapter belongs to (a few milliseconds; not cached, so
        that weights changed in place are never vouched for)."""
        return state_sha256(base_state(self.unet))

    def register_adapter(self, settings: LoraSettings, map_scale: torch.Tensor) -> None:
        """Record an adapter already attached to the denoiser, with its recipe's map scales."""
        if self.base_map_scale is None:
            self.base_map_scale = self.map_scale.detach().clone()
        self.adapters[settings.name] = (settings, map_scale.detach().clone().float())

    def add_adapter(
        self,
        settings: LoraSettings,
        state: dict[str, torch.Tensor],
        map_scale: torch.Tensor,
        base_sha256: str,
    ) -> None:
        """Attach a trained adapter to this model's denoiser (not yet in use: :meth:`use_adapter`);
        refused when it was trained on another base or its name is taken."""
        if base_sha256 != self.base_sha256():
            raise AdapterError(
                f"adapter {settings.name} was trained on another base denoiser than this model's"
            )
        if settings.name in self.adapters:
            raise AdapterError(f"this model already holds an adapter named {settings.name}")
        attach(self.unet, settings)
        load_adapter_state(self.unet, settings.name, state)
        activate(self.unet, self.active_adapter)  # injecting may switch the active one
        self.register_adapter(settings, map_scale)

    def use_adapter(self, name: str | None) -> None:
        """Denoise with adapter ``name`` and its map scales, or with the bare base (``None``); the
        base weights are not touched, so switching back restores the base's outputs exactly."""
        if name is not None and name not in self.adapters:
            raise AdapterError(f"no adapter named {name}; this model holds {sorted(self.adapters) or 'none'}")
        activate(self.unet, name)
        if name is not None:
            self.map_scale.copy_(self.adapters[name][1])
        elif self.base_map_scale is not None:
            self.map_scale.copy_(self.base_map_scale)
        self.active_adapter = name

    # --- between images and the denoiser's space ---

    @staticmethod
    def pixels(images: torch.Tensor) -> torch.Tensor:
        """ImageNet-normalised (B, 3, S, S) → pixels in [0, 1]."""
        return (images * IMAGENET_STD.to(images) + IMAGENET_MEAN.to(images)).clamp(0, 1)

    def to_latent(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.autoencoder is not None:
            encode = self.autoencoder.encode
            raw = torch.cat([encode(c) for c in pixels.split(self.full_size_chunk)])
        else:
            raw = F.interpolate(pixels, size=(self.latent_side,) * 2, mode="area") * 2 - 1
        return (raw - self.latent_mean.view(1, -1, 1, 1)) / self.latent_std.view(1, -1, 1, 1)

    def from_latent(self, latents: torch.Tensor) -> torch.Tensor:
        raw = latents * self.latent_std.view(1, -1, 1, 1) + self.latent_mean.view(1, -1, 1, 1)
        if self.autoencoder is not None:
            decode = self.autoencoder.decode
            return torch.cat([decode(c) for c in raw.split(self.full_size_chunk)])
        return F.interpolate(((raw + 1) / 2).clamp(0, 1), size=(self.image_size,) * 2, mode="bilinear")

    # --- reconstruction ---

    def _eps(self, x: torch.Tensor, t: int) -> torch.Tensor:
        steps = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
        eps: torch.Tensor = self.unet(x, steps).sample
        return eps

    def denoise_from(self, condition: torch.Tensor, start: int) -> tuple[torch.Tensor, int]:
        """Noise ``condition`` (latents) to step ``start`` and denoise it back with guided DDIM;
        returns the reconstruction and the DDIM steps taken (fewer when it converged early)."""
        p = self.params
        alphas = self.alphas
        noise = self.noise.expand_as(condition)
        x = add_noise(condition, noise, torch.full((condition.shape[0],), start), alphas)
        schedule = torch.linspace(start, 0, p.ddim_steps + 1).round().long().tolist()
        previous: torch.Tensor | None = None
        taken = 0
        for i, t in enumerate(schedule[:-1]):
            t_prev = int(schedule[i + 1]) if schedule[i + 1] > 0 else -1  # the last step: to clean
            eps = self._eps(x, t)
            abar = float(alphas[t])
            target = abar**0.5 * condition + (1 - abar) ** 0.5 * eps  # the condition at this step
            eps = eps - p.guidance * (1 - abar) ** 0.5 * (target - x)
            x, x0 = ddim_step(x, eps, t, t_prev, alphas)
            taken += 1
            if previous is not None:
                change = (x0 - previous).norm() / previous.norm().clamp_min(1e-6)
                if float(change) < p.stop_tolerance:
                    x = x0
                    break
            previous = x0
        return x, taken

    def reconstruct(self, pixels: torch.Tensor) -> torch.Tensor:
        """Two-stage reconstruction of pixels in [0, 1] (B, 3, S, S), in pixels."""
        latents = self.to_latent(pixels)
        first, _ = self.denoise_from(latents, self.params.t1)
        disagreement = (first - latents).abs().mean(dim=1, keepdim=True)
        scale = disagreement.flatten(1).quantile(0.99, dim=1).view(-1, 1, 1, 1).clamp_min(1e-6)
        weight = (disagreement / scale).clamp(0, 1)
        fused = weight * first + (1 - weight) * latents
        second, _ = self.denoise_from(fused, self.params.t2)
        return self.from_latent(second)

    def discrepancies(
        self, pixels: torch.Tensor, reconstruction: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Pixel and feature discrepancy maps (B, S, S), not yet scaled."""
        pixel_map, feature_map, _, _ = self._discrepancies(pixels, reconstruction)
        return pixel_map, feature_map

    def _discrepancies(
        self, pixels: torch.Tensor, reconstruction: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        chunk = self.full_size_chunk
        parts = [
            self._discrepancies_of(a, b)
            for a, b in zip(pixels.split(chunk), reconstruction.split(chunk), strict=True)
        ]
        if len(parts) == 1:
            return parts[0]
        layers = range(len(parts[0][2]))
        return (
            torch.cat([p[0] for p in parts]),
            torch.cat([p[1] for p in parts]),
            [torch.cat([p[2][i] for p in parts]) for i in layers],
            [torch.cat([p[3][i] for p in parts]) for i in layers],
        )

    def _discrepancies_of(
        self, pixels: torch.Tensor, reconstruction: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        size = (self.image_size, self.image_size)
        pixel_map = (pixels - reconstruction).abs().mean(dim=1)
        mean, std = IMAGENET_MEAN.to(pixels), IMAGENET_STD.to(pixels)
        ours = self.extractor((pixels - mean) / std)
        theirs = self.extractor((reconstruction - mean) / std)
        feature_map = torch.zeros_like(pixel_map)
        for a, b in zip(ours, theirs, strict=True):
            distance = 1 - F.cosine_similarity(a.float(), b.float(), dim=1).unsqueeze(1)
            feature_map += F.interpolate(distance, size=size, mode="bilinear", align_corners=False)[:, 0]
        return pixel_map, feature_map / len(ours), ours, theirs

    def score_with_residuals(
        self, images: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Image scores (B,), maps (B, S, S), embeddings (B, D) (the frame's pooled features) and
        residuals (B, D', h, w): the frame's minus the reconstruction's normalised features on the
        middle layer's grid, what the defect added."""
        pixels = self.pixels(images.float())
        reconstruction = self.reconstruct(pixels)
        pixel_map, feature_map, ours, theirs = self._discrepancies(pixels, reconstruction)
        maps = 0.5 * pixel_map / self.map_scale[0] + 0.5 * feature_map / self.map_scale[1]
        if self.segmenter is not None:
            logits = self.segmenter(self.head_inputs(maps, ours, theirs))
            maps = torch.sigmoid(F.interpolate(logits.float(), size=maps.shape[-2:], mode="bilinear"))[:, 0]
        maps = gaussian_blur(maps.unsqueeze(1), self.params.sigma).squeeze(1).clamp_min(1e-6)
        flat = maps.flatten(1)
        k = max(1, round(self.params.image_top_share * flat.shape[1]))
        scores = flat.topk(k, dim=1).values.mean(dim=1)
        embeddings = torch.cat([f.float().mean(dim=(2, 3)) for f in ours], dim=1)
        grid = ours[len(ours) // 2].shape[-2:]
        residuals = torch.cat(
            [
                F.interpolate(
                    F.normalize(a.float(), dim=1) - F.normalize(b.float(), dim=1), size=grid, mode="bilinear"
                )
                for a, b in zip(ours, theirs, strict=True)
            ],
            dim=1,
        )
        return scores, maps, embeddings, residuals

    @staticmethod
    def head_inputs(
        discrepancy: torch.Tensor, ours: list[torch.Tensor], theirs: list[torch.Tensor]
    ) -> torch.Tensor:
        """What the segmentation head sees: per layer the product of the frame's and the
        reconstruction's channel-normalised features (DeSTSeg's input, the reconstruction in the
        student's place) on the finest layer's grid, and the scaled discrepancy map pooled to it."""
        products = product_features(ours, theirs)
        grid = (int(products.shape[-2]), int(products.shape[-1]))
        pooled = F.adaptive_avg_pool2d(discrepancy.unsqueeze(1).float(), grid)
        return torch.cat([products, pooled], dim=1)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        scores, maps, embeddings, _ = self.score_with_residuals(images)
        return scores, maps, embeddings


def params_for_card(params: DiffusionParams) -> dict[str, Any]:
    return asdict(params)


def params_from_card(raw: dict[str, Any]) -> DiffusionParams:
    values = dict(raw)
    values["channels"] = tuple(values["channels"])
    values.setdefault("lora", None)
    return replace(DiffusionParams(), **values)
