"""DeSTSeg (Zhang et al., CVPR 2023; seed 004): a denoising student–teacher with a segmentation head.

- **Teacher:** a frozen pretrained backbone (any the engine supports; MobileNetV2 here), its
  features at three strides (``DESTSEG_LAYERS``).
- **Student:** an encoder–decoder trained from scratch, stage 1: given a good image with a
  synthetic defect drawn on it (:mod:`services.vision.synthesis`), reproduce the teacher's features
  *of the clean image* (cosine distance per position, summed over the layers). It learns to
  "denoise" defects away, so on a real defect student and teacher disagree.
- **Segmentation head:** stage 2, student and teacher frozen: the element-wise product of their
  channel-normalised features (a per-channel cosine), upsampled to the finest stride and
  concatenated, goes through a small ASPP head trained on the synthetic masks (focal + L1 loss).
- **Scores:** the head's probability map, upsampled to the input size and smoothed, is the anomaly
  map; the image score is the mean of its highest ``image_top_share``. Calibrated on held-out good
  images like every detector.

Training: Adam with a cosine schedule per stage, a fixed synthetic validation set drawn on held-out
good images (early stopping on its loss and pixel AP), checkpoints of the best state, a NaN loss
stops with a clear message and keeps the last good checkpoint; ``device`` "cuda" trains on a GPU
with bfloat16 autocast.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from services.vision.backbone import FeatureExtractor
from services.vision.maps import gaussian_blur
from services.vision.metrics import pixel_ap
from services.vision.synthesis import Synthesiser

if TYPE_CHECKING:
    from services.vision.synthetic_set import GeneratedDefects

DESTSEG_LAYERS: dict[str, list[str]] = {
    "mobilenet_v2": ["features.3", "features.6", "features.13"],
    "mobilenet_v3_large": ["features.3", "features.6", "features.12"],
    "resnet18": ["layer1", "layer2", "layer3"],
    "resnet34": ["layer1", "layer2", "layer3"],
    "resnet50": ["layer1", "layer2", "layer3"],
    "wide_resnet50_2": ["layer1", "layer2", "layer3"],
}
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


class TrainingDiverged(RuntimeError):
    """The loss turned NaN or infinite; the message says where the last good checkpoint is."""


@dataclass(frozen=True)
class DestsegParams:
    width: int = 16  # the student's first-stage channels (doubling per stride, at most 8x)
    seg_channels: int = 48
    student_steps: int = 1500
    segmentation_steps: int = 700
    batch_size: int = 8
    student_lr: float = 2e-3
    segmentation_lr: float = 2e-3
    defect_probability: float = 0.5  # share of training images that get a synthetic defect
    # with generated defects (--generated): the share of stage 2's defects taken from them
    generated_share: float = 0.5
    focal_gamma: float = 4.0
    image_top_share: float = 0.01
    sigma: float = 4.0
    eval_every: int = 100
    patience: int = 4  # evaluations without improvement before a stage stops early
    min_share: float = 0.4  # a stage runs at least this share of its steps
    seed: int = 0
    # the teacher's feature channels and strides, found at fit time; the student is built from them
    teacher_channels: tuple[int, ...] = ()
    teacher_strides: tuple[int, ...] = ()


def _conv(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class _ResidualBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _conv(cin, cout, stride), nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        )
        self.skip = (
            nn.Identity()
            if cin == cout and stride == 1
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.skip(x))


def _width_at(stride: int, width: int) -> int:
    return width * min(max(stride // 2, 1), 8)


class Student(nn.Module):
    """Encoder down to twice the teacher's deepest stride, decoder back up to its finest, without
    skip connections (a defect must not pass straight through), a 1x1 head per teacher layer."""

    def __init__(self, channels: tuple[int, ...], strides: tuple[int, ...], width: int) -> None:
        super().__init__()
        self.strides = tuple(strides)
        stride = 2
        encoder: list[nn.Module] = [_conv(3, width, 2)]
        while stride < 2 * max(strides):
            encoder.append(_ResidualBlock(_width_at(stride, width), _width_at(stride * 2, width), 2))
            stride *= 2
        self.encoder = nn.Sequential(*encoder)
        self.decoder = nn.ModuleList()
        self.heads = nn.ModuleDict()
        while stride > min(strides):
            self.decoder.append(_ResidualBlock(_width_at(stride, width), _width_at(stride // 2, width), 1))
            stride //= 2
            if stride in strides:
                self.heads[str(stride)] = nn.Conv2d(
                    _width_at(stride, width), channels[strides.index(stride)], 1
                )

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        x = self.encoder(images)
        stride = 2 ** len(self.encoder)  # the stem and every encoder block halve the size
        outputs: dict[int, torch.Tensor] = {}
        for block in self.decoder:
            x = block(F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False))
            stride //= 2
            if str(stride) in self.heads:
                outputs[stride] = self.heads[str(stride)](x)
        return [outputs[s] for s in self.strides]


class Segmenter(nn.Module):
    """A small ASPP head: 1x1 reduction, three dilated 3x3 branches, 1x1 fusion, one logit."""

    def __init__(self, in_channels: int, channels: int) -> None:
        super().__init__()
        self.reduce = nn.Sequential(
            nn.Conv2d(in_channels, channels, 1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(inplace=True)
        )
        self.branches = nn.ModuleList([_conv(channels, channels, dilation=d) for d in (1, 3, 6)])
        self.fuse = nn.Sequential(
            nn.Conv2d(3 * channels, channels, 1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(inplace=True)
        )
        self.out = nn.Conv2d(channels, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.reduce(x)
        return self.out(self.fuse(torch.cat([branch(x) for branch in self.branches], dim=1)))


def product_features(teacher: list[torch.Tensor], student: list[torch.Tensor]) -> torch.Tensor:
    """Per layer, the product of the channel-normalised teacher and student features, upsampled to
    the finest layer's grid and concatenated: (B, sum C, h, w)."""
    size = teacher[0].shape[-2:]
    parts = []
    for t, s in zip(teacher, student, strict=True):
        part = F.normalize(t.float(), dim=1) * F.normalize(s.float(), dim=1)
        if part.shape[-2:] != size:
            part = F.interpolate(part, size=size, mode="bilinear", align_corners=False)
        parts.append(part)
    return torch.cat(parts, dim=1)


def cosine_distance(student: list[torch.Tensor], teacher: list[torch.Tensor]) -> torch.Tensor:
    """Stage 1's loss: the mean of 1 - cos(student, teacher) over positions, summed over layers."""
    return sum(
        (1 - F.cosine_similarity(s.float(), t.float(), dim=1)).mean()
        for s, t in zip(student, teacher, strict=True)
    )  # type: ignore[return-value]


def focal_loss(prob: torch.Tensor, target: torch.Tensor, gamma: float) -> torch.Tensor:
    """Binary focal loss on probabilities (soft targets allowed)."""
    prob = prob.clamp(1e-6, 1 - 1e-6)
    p_t = prob * target + (1 - prob) * (1 - target)
    ce = -(target * torch.log(prob) + (1 - target) * torch.log(1 - prob))
    return ((1 - p_t) ** gamma * ce).mean()


class DestsegModel(nn.Module):
    def __init__(
        self,
        extractor: FeatureExtractor,
        student: Student,
        segmenter: Segmenter,
        image_size: int,
        params: DestsegParams,
    ) -> None:
        super().__init__()
        self.extractor = extractor
        self.student = student
        self.segmenter = segmenter
        self.image_size = image_size
        self.params = params

    def seg_logits(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        teacher = self.extractor(images)
        student = self.student(images)
        return self.segmenter(product_features(teacher, student)), teacher, student

    def score_with_residuals(
        self, images: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Image scores (B,), anomaly maps (B, S, S) (probabilities), embeddings (B, D) (the pooled
        teacher features) and residuals (B, D', h, w): normalised teacher minus student features on
        the middle layer's grid, what the defect changed, for defect embeddings."""
        logits, teacher, student = self.seg_logits(images)
        maps = torch.sigmoid(
            F.interpolate(logits.float(), size=(self.image_size,) * 2, mode="bilinear", align_corners=False)
        )
        maps = gaussian_blur(maps, self.params.sigma).squeeze(1)
        flat = maps.flatten(1)
        k = max(1, round(self.params.image_top_share * flat.shape[1]))
        scores = flat.topk(k, dim=1).values.mean(dim=1)
        embeddings = torch.cat([t.float().mean(dim=(2, 3)) for t in teacher], dim=1)
        grid = teacher[len(teacher) // 2].shape[-2:]
        residuals = torch.cat(
            [
                F.interpolate(
                    F.normalize(t.float(), dim=1) - F.normalize(s.float(), dim=1),
                    size=grid,
                    mode="bilinear",
                    align_corners=False,
                )
                for t, s in zip(teacher, student, strict=True)
            ],
            dim=1,
        )
        return scores, maps, embeddings, residuals

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        scores, maps, embeddings, _ = self.score_with_residuals(images)
        return scores, maps, embeddings


def build_destseg(extractor: FeatureExtractor, image_size: int, params: DestsegParams) -> DestsegModel:
    """An untrained DeSTSeg around ``extractor``; the teacher's channels and strides are probed when
    ``params`` does not carry them yet (returned in the model's params)."""
    if not params.teacher_channels:
        with torch.inference_mode():
            probe = extractor(torch.zeros(1, 3, image_size, image_size))
        channels = tuple(int(f.shape[1]) for f in probe)
        strides = tuple(image_size // int(f.shape[-1]) for f in probe)
        if len(set(strides)) != len(strides) or any(s & (s - 1) for s in strides):
            raise ValueError(f"DeSTSeg needs teacher layers at distinct power-of-two strides, got {strides}")
        params = _replace(params, teacher_channels=channels, teacher_strides=strides)
    student = Student(params.teacher_channels, params.teacher_strides, params.width)
    segmenter = Segmenter(sum(params.teacher_channels), params.seg_channels)
    return DestsegModel(extractor, student, segmenter, image_size, params)


def asdict_params(params: DestsegParams) -> dict[str, Any]:
    """The params as the card stores them."""
    from dataclasses import asdict

    return asdict(params)


def _replace(params: DestsegParams, **changes: Any) -> DestsegParams:
    from dataclasses import replace

    return replace(params, **changes)


# --- training -------------------------------------------------------------------------------------


@dataclass
class StageResult:
    steps: int
    best_step: int
    best_metric: float
    stopped_early: bool
    seconds: float
    losses: list[float] = field(default_factory=list)  # mean training loss per evaluation interval
    validation: list[float] = field(default_factory=list)


@dataclass
class DestsegTraining:
    student: StageResult
    segmentation: StageResult
    device: str
    synthesis_images_per_s: float
    # where stage 1 came from when it was not trained here, and the generated defects stage 2 used
    student_from: str | None = None
    generated: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


def normalise(images: torch.Tensor) -> torch.Tensor:
    """uint8 or [0, 1] (B, 3, S, S) → ImageNet-normalised float."""
    pixels = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    return (pixels - IMAGENET_MEAN.to(pixels.device)) / IMAGENET_STD.to(pixels.device)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: no CUDA GPU is available here; use cpu or auto")
    return torch.device(device)


@dataclass
class _Validation:
    images: torch.Tensor  # uint8 (V, 3, S, S) with synthetic defects (and clean ones)
    clean: torch.Tensor  # uint8 (V, 3, S, S): the same goods without them
    masks: torch.Tensor  # bool (V, S, S)


def validation_set(
    goods: torch.Tensor, foregrounds: torch.Tensor, synthesiser: Synthesiser, seed: int
) -> _Validation:
    """Each held-out good once clean and once with a synthetic defect (fixed by ``seed``)."""
    generator = torch.Generator().manual_seed(seed + 7919)
    drawn = synthesiser.apply(goods, generator, foregrounds)
    images = torch.cat([goods, drawn.images])
    masks = torch.cat([torch.zeros_like(drawn.masks), drawn.masks])
    return _Validation(images, torch.cat([goods, goods]), masks)


class _Checkpoints:
    """The best state of each stage on disk, so that a crash or a NaN loses nothing good."""

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)

    def save(self, name: str, state: dict[str, torch.Tensor], step: int) -> Path | None:
        if self.folder is None:
            return None
        path = self.folder / f"{name}.pt"
        tmp = path.with_suffix(".tmp")
        torch.save({"step": step, "state": {k: v.detach().cpu() for k, v in state.items()}}, tmp)
        tmp.replace(path)
        return path


def _autocast(device: torch.device) -> Any:
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    from contextlib import nullcontext

    return nullcontext()


def _run_stage(
    name: str,
    module: nn.Module,
    steps: int,
    lr: float,
    params: DestsegParams,
    step_loss: Callable[[torch.Generator], torch.Tensor],
    validate: Callable[[], float],
    higher_is_better: bool,
    checkpoints: _Checkpoints,
    progress: bool,
    seed: int,
) -> StageResult:
    optimiser = torch.optim.Adam([p for p in module.parameters() if p.requires_grad], lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=max(1, steps), eta_min=lr * 0.01)
    generator = torch.Generator().manual_seed(seed)
    best_state = copy.deepcopy(module.state_dict())
    best_metric, best_step, since_best = -math.inf if higher_is_better else math.inf, 0, 0
    result = StageResult(steps=0, best_step=0, best_metric=float("nan"), stopped_early=False, seconds=0.0)
    started = time.perf_counter()
    running: list[float] = []
    bar = tqdm(range(1, steps + 1), desc=f"DeSTSeg {name}", unit="step", disable=not progress)
    for step in bar:
        module.train()
        loss = step_loss(generator)
        if not torch.isfinite(loss):
            module.load_state_dict(best_state)
            path = checkpoints.save(name, best_state, best_step)
            where = f"; the last good state (step {best_step}) is kept at {path}" if path else ""
            raise TrainingDiverged(f"DeSTSeg {name} loss became {loss.item()} at step {step}{where}")
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        running.append(float(loss.detach()))
        result.steps = step
        if step % params.eval_every == 0 or step == steps:
            module.eval()
            metric = validate()
            result.losses.append(round(sum(running) / len(running), 5))
            result.validation.append(round(metric, 5))
            running = []
            bar.set_postfix(loss=result.losses[-1], val=result.validation[-1])
            improved = metric > best_metric if higher_is_better else metric < best_metric
            if improved:
                best_metric, best_step, since_best = metric, step, 0
                best_state = copy.deepcopy(module.state_dict())
                checkpoints.save(name, best_state, step)
            else:
                since_best += 1
                if since_best >= params.patience and step >= params.min_share * steps:
                    result.stopped_early = True
                    break
    bar.close()
    module.load_state_dict(best_state)
    module.eval()
    result.best_step, result.best_metric = best_step, round(best_metric, 5)
    result.seconds = round(time.perf_counter() - started, 2)
    return result


def fit_destseg(
    extractor: FeatureExtractor,
    goods: torch.Tensor,
    foregrounds: torch.Tensor,
    held_out: torch.Tensor,
    held_out_foregrounds: torch.Tensor,
    image_size: int,
    params: DestsegParams,
    synthesiser: Synthesiser,
    device: str = "auto",
    checkpoint_dir: Path | None = None,
    progress: bool = True,
    generated: GeneratedDefects | None = None,
    student: tuple[dict[str, torch.Tensor], str] | None = None,
) -> tuple[DestsegModel, DestsegTraining]:
    """Train DeSTSeg on ``goods`` (uint8 (N, 3, S, S), with their foregrounds) in two stages,
    validating on synthetic defects drawn on ``held_out``; returns the model (on the CPU, eval).

    ``generated``: defect images with masks (e.g. diffusion-generated from a few real ones) that
    stage 2 mixes in, ``params.generated_share`` of its defects, a fifth of them kept for its
    validation. ``student``: a trained student's state and where it came from; stage 1 is then
    skipped (a new head on new defects in minutes)."""
    torch.manual_seed(params.seed)
    model = build_destseg(extractor, image_size, params)
    params = model.params
    if student is not None:
        try:
            model.student.load_state_dict(student[0])
        except RuntimeError as err:
            raise ValueError(f"the student of {student[1]} does not fit this model: {err}") from err
    generated_fit, generated_val = _split_generated(generated, image_size)
    target = resolve_device(device)
    model.to(target)
    model.extractor.requires_grad_(False).eval()
    checkpoints = _Checkpoints(checkpoint_dir)
    validation = validation_set(held_out, held_out_foregrounds, synthesiser, params.seed)
    n = goods.shape[0]
    start = time.perf_counter()
    probe = synthesiser.apply(
        goods[: params.batch_size], torch.Generator().manual_seed(0), foregrounds[: params.batch_size]
    )
    synth_rate = probe.images.shape[0] / max(time.perf_counter() - start, 1e-9)

    def draw(generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        index = torch.randint(0, n, (params.batch_size,), generator=generator)
        drawn = synthesiser.apply(goods[index], generator, foregrounds[index], params.defect_probability)
        return goods[index], drawn.images, drawn.masks

    def student_loss(generator: torch.Generator) -> torch.Tensor:
        clean, noisy, _ = draw(generator)
        with torch.no_grad(), _autocast(target):
            teacher = model.extractor(normalise(clean.to(target)))
        with _autocast(target):
            student = model.student(normalise(noisy.to(target)))
        return cosine_distance(student, teacher)

    def student_validation() -> float:
        losses = []
        with torch.inference_mode(), _autocast(target):
            for k in range(0, validation.images.shape[0], params.batch_size):
                part = slice(k, k + params.batch_size)
                teacher = model.extractor(normalise(validation.clean[part].to(target)))
                student = model.student(normalise(validation.images[part].to(target)))
                losses.append(float(cosine_distance(student, teacher)))
        return sum(losses) / len(losses)

    model.segmenter.requires_grad_(False)
    if student is None:
        student_result = _run_stage(
            "student",
            model.student,
            params.student_steps,
            params.student_lr,
            params,
            student_loss,
            student_validation,
            False,
            checkpoints,
            progress,
            params.seed,
        )
    else:
        model.student.eval()
        student_result = StageResult(
            steps=0, best_step=0, best_metric=round(student_validation(), 5), stopped_early=False, seconds=0.0
        )
    model.student.requires_grad_(False).eval()
    model.segmenter.requires_grad_(True)

    def segmentation_loss(generator: torch.Generator) -> torch.Tensor:
        _, noisy, masks = draw(generator)
        if generated_fit is not None:
            noisy, masks = _mix_generated(noisy, masks, generated_fit, params.generated_share, generator)
        images = normalise(noisy.to(target))
        with torch.no_grad(), _autocast(target):
            features = product_features(model.extractor(images), model.student(images))
        with _autocast(target):
            logits = model.segmenter(features).float()
        truth = F.interpolate(masks.to(target).float().unsqueeze(1), size=logits.shape[-2:], mode="area")
        prob = torch.sigmoid(logits)
        return focal_loss(prob, truth, params.focal_gamma) + (prob - truth).abs().mean()

    seg_images, seg_masks = validation.images, validation.masks
    if generated_val is not None:
        seg_images = torch.cat([seg_images, generated_val[0]])
        seg_masks = torch.cat([seg_masks, generated_val[1]])

    def segmentation_validation() -> float:
        maps = []
        with torch.inference_mode(), _autocast(target):
            for k in range(0, seg_images.shape[0], params.batch_size):
                logits, _, _ = model.seg_logits(normalise(seg_images[k : k + params.batch_size].to(target)))
                maps.append(torch.sigmoid(logits.float()).squeeze(1).cpu())
        stacked = torch.cat(maps)
        truth = F.adaptive_max_pool2d(seg_masks.float().unsqueeze(1), stacked.shape[-2:]).squeeze(1) > 0
        return pixel_ap(stacked.numpy(), truth.numpy()) if truth.any() else 0.0

    segmentation_result = _run_stage(
        "segmentation",
        model.segmenter,
        params.segmentation_steps,
        params.segmentation_lr,
        params,
        segmentation_loss,
        segmentation_validation,
        True,
        checkpoints,
        progress,
        params.seed + 1,
    )
    model.to("cpu").eval()
    model.extractor = model.extractor.to(memory_format=torch.channels_last)
    used = None
    if generated is not None and generated_fit is not None:
        used = {
            "source": generated.source,
            "method": generated.method,
            "images": int(generated_fit[0].shape[0]),
            "validation_images": int(generated_val[0].shape[0]) if generated_val is not None else 0,
            "left_out_held_out_goods": generated.left_out,
            "seed_defects": generated.seed_defects,
            "share": params.generated_share,
        }
    return model, DestsegTraining(
        student_result,
        segmentation_result,
        str(target),
        round(synth_rate, 1),
        student[1] if student is not None else None,
        used,
    )


def _split_generated(
    generated: GeneratedDefects | None, image_size: int
) -> tuple[tuple[torch.Tensor, torch.Tensor] | None, tuple[torch.Tensor, torch.Tensor] | None]:
    """Every fifth generated defect for stage 2's validation (when there are 10 or more), the rest
    to train on."""
    if generated is None:
        return None, None
    images, masks = generated.images, generated.masks
    side = (image_size, image_size)
    if images.ndim != 4 or images.shape[-2:] != side or masks.shape[-2:] != side:
        raise ValueError(
            f"generated defects are {tuple(images.shape)} with masks {tuple(masks.shape)};"
            f" expected (M, 3, {image_size}, {image_size})"
        )
    count = images.shape[0]
    if count < 10:
        return (images, masks), None
    held = torch.arange(count) % 5 == 4
    return (images[~held], masks[~held]), (images[held], masks[held])


def _mix_generated(
    noisy: torch.Tensor,
    masks: torch.Tensor,
    generated: tuple[torch.Tensor, torch.Tensor],
    share: float,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace ``share`` of the batch's drawn defects by generated ones (randomly mirrored)."""
    noisy, masks = noisy.clone(), masks.clone()
    images, truth = generated
    for b in range(noisy.shape[0]):
        if not bool(masks[b].any()) or float(torch.rand(1, generator=generator)) >= share:
            continue
        j = int(torch.randint(0, images.shape[0], (1,), generator=generator))
        image, mask = images[j], truth[j]
        if float(torch.rand(1, generator=generator)) < 0.5:
            image, mask = image.flip(-1), mask.flip(-1)
        noisy[b] = image.to(noisy.dtype)
        masks[b] = mask
    return noisy, masks
