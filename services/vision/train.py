"""Training a detector on good images: split, fit, calibrate on the held-out part, add that part to the
per-position statistics (where the model has them), save the artifact. DeSTSeg also draws synthetic
defects on the good images (:mod:`services.vision.synthesis`) and validates on the held-out part."""

from __future__ import annotations

import hashlib
import random
import shutil
import time
from collections.abc import Iterable, Iterator
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import torch
from tqdm import tqdm

from services.vision.artifact import ModelCard, TrainingInfo, now_iso, params_dict, save_artifact
from services.vision.backbone import FeatureExtractor, build_feature_extractor, default_layers
from services.vision.calibration import fit_threshold
from services.vision.crossfit import (
    DEFAULT_FOLDS,
    OutOfFold,
    choice_subset,
    crossfit_patchcore,
    out_of_fold_scores,
)
from services.vision.dataset import (
    DatasetError,
    LoadedBatch,
    Roi,
    SkippedFile,
    iter_batches,
    list_train_images,
    preprocess,
    resize_for_model,
)
from services.vision.defects import DefectRules
from services.vision.destseg import DESTSEG_LAYERS, DestsegParams, fit_destseg
from services.vision.diffusion.model import DiffusionParams
from services.vision.images import ImageError, load_image
from services.vision.memory import release_free_memory
from services.vision.operating import DEFAULT_REVIEW_FPR, OperatingCurve, review_band
from services.vision.patchcore import PatchCoreModel, PatchCoreParams, PositionStatistics, fit_patchcore
from services.vision.position_choice import METRIC_SIDE, choose_blend, rate_blends, validation_image
from services.vision.spade import SpadeParams, fit_spade
from services.vision.synthesis import Synthesiser, SynthesisSettings, foreground_mask, load_textures

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
    # DeSTSeg: its training settings, the synthetic defects it learns from, a texture folder, and
    # where it trains ("auto": a CUDA GPU when there is one)
    destseg: DestsegParams = field(default_factory=DestsegParams)
    synthesis: SynthesisSettings = field(default_factory=SynthesisSettings)
    textures: Path | None = None
    # DeSTSeg: a synthetic set (linewatch synth, e.g. --method diffusion) whose defects stage 2 mixes
    # in, and a trained DeSTSeg whose student is reused (stage 1 skipped)
    generated: Path | None = None
    student_from: Path | None = None
    device: str = "auto"
    # diffusion: the denoiser's settings and the tiny autoencoder's weights (encoder, decoder) for
    # the latent space
    diffusion: DiffusionParams = field(default_factory=DiffusionParams)
    autoencoder: tuple[Path, Path] | None = None
    # diffusion: a trained diffusion model to adapt to this category with a LoRA adapter of this rank
    # (its denoiser frozen and shared; ``diffusion.steps`` etc. are the adapter's training budget)
    base: Path | None = None
    lora_rank: int = 8
    # ensemble: its members (trained model folders, or detector names trained now), how their maps
    # and image scores are weighted and fused, and the share of good frames the pre-screen passes on
    members: tuple[str, ...] = ()
    map_weights: tuple[float, ...] | None = None
    image_weights: tuple[float, ...] | None = None
    fusion: str = "geometric"
    pass_share: float = 1.0
    # PatchCore: add the held-out images to the per-position statistics once calibrated (False for
    # an ensemble's member: the ensemble calibrates on the same images and needs them unseen)
    fold_holdout: bool = True
    # PatchCore: score every good image out of sample in this many folds and calibrate on all of
    # them (services/vision/crossfit.py); 0 or 1 holds ``holdout`` of them out instead
    folds: int = DEFAULT_FOLDS
    # the REVIEW band: at most this share of good parts reach REVIEW or NG (None or 0: no band)
    review_fpr: float | None = DEFAULT_REVIEW_FPR


def training_fingerprint(paths: list[Path]) -> str:
    """sha256 over each training file's name and content: identifies the data a model learned."""
    digest = hashlib.sha256()
    for path in sorted(paths, key=lambda p: p.name):
        digest.update(path.name.encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def model_version(created: str, fingerprint: str) -> str:
    """A model's version: when it was made (to the second) and which data it learned."""
    return created.replace("-", "").replace(":", "")[:15] + "-" + fingerprint[:8]


def split_holdout(paths: list[Path], share: float, seed: int) -> tuple[list[Path], list[Path]]:
    if len(paths) < MIN_TRAIN_IMAGES:
        raise DatasetError(f"only {len(paths)} training images; need at least {MIN_TRAIN_IMAGES}")
    shuffled = list(paths)
    random.Random(seed).shuffle(shuffled)
    n_holdout = min(len(paths) - 3, max(3, round(share * len(paths))))
    return sorted(shuffled[n_holdout:]), sorted(shuffled[:n_holdout])


def _batches(
    paths: list[Path], config: TrainConfig, skipped: list[SkippedFile], desc: str
) -> Iterator[LoadedBatch]:
    yield from tqdm(
        iter_batches(paths, config.image_size, config.batch_size, skipped, config.roi),
        total=-(-len(paths) // config.batch_size),
        desc=desc,
        unit="batch",
        disable=not config.progress,
    )


@dataclass
class HeldOutScores:
    """The patch and position distances (:meth:`PatchCoreModel.component_scores`) of the held-out good
    images that could be decoded, in order: computed once, they give the score spreads, the goods'
    side of the blend choice and the calibration scores."""

    paths: list[Path]
    patch: torch.Tensor  # (N, h*w)
    position: torch.Tensor  # (N, h*w)
    grid: tuple[int, int]


def score_held_out(
    model: PatchCoreModel, batches: Iterable[LoadedBatch], collect: PositionStatistics | None = None
) -> HeldOutScores:
    """Score the held-out good images; their position features go into ``collect`` when given."""
    paths, patch, position = [], [], []
    grid = (0, 0)
    with torch.inference_mode():
        for batch in batches:
            patch_scores, position_scores, grid = model.component_scores(batch.images, collect)
            paths += batch.paths
            patch.append(patch_scores)
            position.append(position_scores)
            release_free_memory()  # see memory.py: without it the heaps grow with every batch
    if not patch:
        raise DatasetError("no held-out image could be decoded, cannot standardise the scores")
    return HeldOutScores(paths, torch.cat(patch), torch.cat(position), grid)


def score_spreads(held: HeldOutScores) -> torch.Tensor:
    """Standard deviations of the patch and the position distances over the held-out good images."""
    return torch.stack([held.patch.std(), held.position.std()]).clamp_min(1e-6)


def choose_position_weight(model: PatchCoreModel, held: HeldOutScores, config: TrainConfig) -> dict[str, Any]:
    """``--position-weight auto``: choose the weight and the image top share on the held-out good
    images and painted copies of them, set them on ``model`` (dropping the position statistics when
    the choice is 0) and return what was chosen and every candidate's scores, for the card."""
    picks = np.arange(len(held.paths))
    if len(picks) > MAX_AUTO_GOODS:
        picks = np.linspace(0, len(picks) - 1, MAX_AUTO_GOODS).round().astype(int)
    kept, goods = [], []
    for i in picks:
        try:
            goods.append(resize_for_model(load_image(held.paths[i]), config.image_size, config.roi))
            kept.append(int(i))
        except ImageError:  # decoded a moment ago: changed since, and left out here too
            continue
    good_scores = (held.patch[kept], held.position[kept])
    choice = choose_blend(model, goods, config.seed, config.batch_size, config.progress, good_scores)
    model.params = replace(
        model.params, position_weight=choice.position_weight, image_top_share=choice.image_top_share
    )
    if choice.position_weight == 0:
        model.position_mean, model.position_precision = torch.empty(0), torch.empty(0)
    return asdict(choice)


def load_goods(
    paths: list[Path], config: TrainConfig, skipped: list[SkippedFile]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Good images at the model's input size as uint8 (N, 3, S, S) and their foregrounds (N, S, S),
    for training on synthetic defects; unreadable files are appended to ``skipped``."""
    images, foregrounds = [], []
    for path in tqdm(paths, desc="loading goods", unit="image", disable=not config.progress):
        try:
            image = resize_for_model(load_image(path), config.image_size, config.roi)
        except ImageError as err:
            skipped.append(SkippedFile(str(path), err.reason))
            continue
        images.append(torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))))
        foregrounds.append(torch.from_numpy(foreground_mask(image, config.synthesis.foreground)))
    if not images:
        raise DatasetError("no training image could be decoded")
    return torch.stack(images), torch.stack(foregrounds)


def train_destseg(
    config: TrainConfig,
    extractor: torch.nn.Module,
    fit_paths: list[Path],
    holdout_paths: list[Path],
    skipped: list[SkippedFile],
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Fit DeSTSeg on the fitted goods, validating on synthetic defects drawn on the held-out ones;
    its best states are checkpointed under ``OUT/checkpoints`` while it trains."""
    goods, foregrounds = load_goods(fit_paths, config, skipped)
    held, held_foregrounds = load_goods(holdout_paths, config, [])  # calibration lists them later
    textures = load_textures(config.textures, skipped) if config.textures is not None else None
    synthesiser = Synthesiser(config.synthesis, textures)
    params = replace(config.destseg, seed=config.seed)
    generated = None
    if config.generated is not None:
        from services.vision.synthetic_set import load_generated

        if config.roi is not None:
            raise ValueError("--generated defects are drawn on whole images; train without --roi to use them")
        generated = load_generated(config.generated, config.image_size, holdout_paths)
    student = _trained_student(config) if config.student_from is not None else None
    if student is not None:
        params = replace(params, width=int(student[2]["width"]))
    model, info = fit_destseg(
        extractor,  # type: ignore[arg-type]
        goods,
        foregrounds,
        held,
        held_foregrounds,
        config.image_size,
        params,
        synthesiser,
        config.device,
        Path(config.out_dir) / "checkpoints",
        config.progress,
        generated,
        student[:2] if student is not None else None,
    )
    return model, info.as_dict()


def _trained_student(config: TrainConfig) -> tuple[dict[str, torch.Tensor], str, dict[str, Any]]:
    """The student of the DeSTSeg model ``--student-from`` names, checked to fit this training."""
    from services.vision.artifact import load_artifact
    from services.vision.destseg import DestsegModel

    model, card = load_artifact(Path(config.student_from))  # type: ignore[arg-type]
    if not isinstance(model, DestsegModel):
        raise ValueError(f"--student-from {config.student_from} is a {card.kind} model, not a DeSTSeg one")
    layers = config.layers or DESTSEG_LAYERS.get(config.backbone)
    if card.image_size != config.image_size or card.backbone != config.backbone or card.layers != layers:
        raise ValueError(
            f"--student-from {config.student_from} was trained at {card.image_size} px on"
            f" {card.backbone} {card.layers}; this training is {config.image_size} px on"
            f" {config.backbone} {layers}"
        )
    return model.student.state_dict(), str(config.student_from), card.params


def train_diffusion(
    config: TrainConfig,
    extractor: torch.nn.Module,
    fit_paths: list[Path],
    holdout_paths: list[Path],
    skipped: list[SkippedFile],
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Fit the diffusion detector's denoiser on the fitted goods and its map scales on the held-out
    ones, then its segmentation head on synthetic defects (unless ``head_steps`` is 0); the
    denoiser's best weights are checkpointed under ``OUT/checkpoints`` while it trains."""
    from services.vision.diffusion.autoencoder import TinyAutoencoder
    from services.vision.diffusion.head import fit_head
    from services.vision.diffusion.train import fit_diffusion

    autoencoder = TinyAutoencoder.load(*config.autoencoder) if config.autoencoder is not None else None
    goods, foregrounds = load_goods(fit_paths, config, skipped)
    held, held_foregrounds = load_goods(holdout_paths, config, [])  # calibration lists them later
    model, info = fit_diffusion(
        extractor,  # type: ignore[arg-type]
        goods,
        held,
        config.image_size,
        replace(config.diffusion, seed=config.seed),
        autoencoder,
        config.device,
        Path(config.out_dir) / "checkpoints",
        config.progress,
    )
    trained = info.as_dict()
    if model.params.head_steps > 0:
        textures = load_textures(config.textures, skipped) if config.textures is not None else None
        synthesiser = Synthesiser(config.synthesis, textures)
        head = fit_head(model, goods, foregrounds, held, held_foregrounds, synthesiser, config.progress)
        trained["head"] = head.as_dict()
    return model, trained


def load_base(config: TrainConfig) -> tuple[torch.nn.Module, ModelCard]:
    """The diffusion model ``--base`` names, checked to be one an adapter can be trained on here."""
    from services.vision.artifact import load_artifact

    if config.detector != "diffusion":
        raise ValueError("--base (a LoRA adapter) is a diffusion setting")
    model, card = load_artifact(Path(config.base))  # type: ignore[arg-type]
    if card.kind != "diffusion" or card.params.get("lora") is not None:
        what = "an adapter itself" if card.kind == "diffusion" else f"a {card.kind} model"
        raise ValueError(f"--base {config.base} is {what}; name a diffusion model trained on its own")
    if card.image_size != config.image_size or (tuple(card.roi) if card.roi else None) != config.roi:
        raise ValueError(
            f"--base {config.base} inspects {card.image_size} px (roi {card.roi}); pass the same --image-size"
            " and --roi"
        )
    return model, card


def train_adapter(
    config: TrainConfig,
    base: tuple[torch.nn.Module, ModelCard],
    fit_paths: list[Path],
    holdout_paths: list[Path],
    skipped: list[SkippedFile],
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """A LoRA adapter of the base's denoiser for this category (lora.py), its map scales on the
    held-out goods; the artifact holds the base and the adapter."""
    from services.vision.diffusion.lora import LoraSettings
    from services.vision.diffusion.train import fit_adapter

    model, card = base
    goods, _ = load_goods(fit_paths, config, skipped)
    held, _ = load_goods(holdout_paths, config, [])  # calibration lists them later
    adapted, info = fit_adapter(
        model,  # type: ignore[arg-type]
        goods,
        held,
        LoraSettings(name=config.category, rank=config.lora_rank, alpha=config.lora_rank),
        replace(config.diffusion, seed=config.seed),
        card.version,
        config.device,
        Path(config.out_dir) / "checkpoints",
        config.progress,
    )
    return adapted, info.as_dict() | {"base": str(config.base), "base_version": card.version}


CHOICE_GOODS = 180
"""Cross-fitted ``auto`` rates its candidates on at most this many good images (evenly spaced) and a
painted copy of each: as many images as 120 held-out goods with two copies each."""


def choose_out_of_fold(model: PatchCoreModel, oof: OutOfFold) -> dict[str, Any]:
    """``--position-weight auto`` on out-of-fold scores: the choice made on good images and painted
    copies that no fold model saw, set on ``model`` (positions dropped when it is 0)."""
    picks = choice_subset(oof, CHOICE_GOODS)
    patch = torch.cat([oof.patch[picks], oof.painted_patch[picks]])
    position = torch.cat([oof.position[picks], oof.painted_position[picks]])
    masks = np.concatenate([np.zeros((len(picks), METRIC_SIDE, METRIC_SIDE), bool), oof.painted_masks[picks]])
    choice = rate_blends(model, patch, position, masks, len(picks), oof.grid)
    model.params = replace(
        model.params, position_weight=choice.position_weight, image_top_share=choice.image_top_share
    )
    if choice.position_weight == 0:
        model.position_mean, model.position_precision = torch.empty(0), torch.empty(0)
    return asdict(choice)


def painted_scores(model: torch.nn.Module, holdout_paths: list[Path], config: TrainConfig) -> np.ndarray:
    """Image scores of a painted copy of each held-out good image (its donor texture another held-out
    image), for the miss-rate side of the operating curve."""
    goods = []
    for path in holdout_paths:
        try:
            goods.append(resize_for_model(load_image(path), config.image_size, config.roi))
        except ImageError:  # listed by the calibration pass
            continue
    if len(goods) < 2:
        return np.empty(0)
    scores = []
    copies = range(len(goods), 2 * len(goods))  # validation_image's first painted copy of each
    with torch.inference_mode():
        for start in tqdm(range(0, len(goods), config.batch_size), desc="painted copies", unit="batch",
                          disable=not config.progress):  # fmt: skip
            batch = [
                validation_image(goods, i, config.seed)[0] for i in copies[start : start + config.batch_size]
            ]
            images = torch.stack([preprocess(image, config.image_size) for image in batch])
            scores.append(model(images)[0].numpy())
            release_free_memory()
    return np.concatenate(scores)


def train(config: TrainConfig) -> ModelCard:
    """Fit, calibrate and save a detector; returns its card. Unusable images are skipped and listed."""
    if config.detector == "ensemble":
        from services.vision.ensemble_build import build_ensemble

        return build_ensemble(config)
    if config.position_weight not in (0, "auto") and config.detector != "patchcore":
        raise ValueError(f"the position weight is a PatchCore setting, not one of {config.detector}")
    started = time.perf_counter()
    paths = list_train_images(config.data_root, config.category)
    crossfit = config.detector == "patchcore" and config.folds >= 2 and config.fold_holdout
    if crossfit:
        fit_paths, holdout_paths = list(paths), list[Path]()
        if len(paths) < MIN_TRAIN_IMAGES:
            raise DatasetError(f"only {len(paths)} training images; need at least {MIN_TRAIN_IMAGES}")
    else:
        fit_paths, holdout_paths = split_holdout(paths, config.holdout, config.seed)
    if (
        config.detector in ("destseg", "diffusion")
        and not config.layers
        and config.backbone not in DESTSEG_LAYERS
    ):
        raise ValueError(f"no DeSTSeg teacher layers known for {config.backbone!r}; pass three with --layers")
    layers = config.layers or (
        DESTSEG_LAYERS[config.backbone]
        if config.detector in ("destseg", "diffusion")
        else default_layers(config.backbone)
    )
    base: tuple[torch.nn.Module, ModelCard] | None = None
    if config.base is not None:
        base = load_base(config)
        extractor = cast(FeatureExtractor, base[0].extractor)
        layers = base[1].layers
    else:
        extractor = build_feature_extractor(config.backbone, layers, config.weights, config.activation)
    skipped: list[SkippedFile] = []
    batches = (batch.images for batch in _batches(fit_paths, config, skipped, "features"))
    model: torch.nn.Module
    params: PatchCoreParams | SpadeParams | DestsegParams | DiffusionParams
    destseg_info: dict[str, Any] | None = None
    diffusion_info: dict[str, Any] | None = None
    auto = config.position_weight == "auto" and config.detector == "patchcore"  # SPADE has no positions
    position_choice: dict[str, Any] | None = None
    held: HeldOutScores | None = None  # the held-out images' distances, where the model has positions
    # the per-position sums, kept after the fit so that the held-out images join them once calibrated
    statistics = PositionStatistics() if config.detector == "patchcore" and not crossfit else None
    position_images: int | None = None
    rated = len(paths) if crossfit else len(holdout_paths)  # good images the choice is made on
    if auto and rated < MIN_AUTO_HOLDOUT:
        auto = False
        what = "good images" if crossfit else "held-out good images"
        position_choice = {
            "position_weight": 0.0,
            "skipped": f"only {rated} {what}; choosing the position weight"
            f" needs {MIN_AUTO_HOLDOUT}, so plain PatchCore is kept",
        }
    curve: OperatingCurve | None = None
    calibration_scores: tuple[np.ndarray, np.ndarray] | None = None  # image scores, map maxima
    if crossfit:
        fixed = 0.0 if config.position_weight == "auto" else float(config.position_weight)
        params = PatchCoreParams(
            coreset_ratio=config.coreset_ratio,
            layer_weights=config.layer_weights,
            position_weight=AUTO_FIT_WEIGHT if auto else fixed,
            seed=config.seed,
        )
        patchcore, oof, all_statistics = crossfit_patchcore(
            extractor, paths, config.image_size, params, config.folds, config.roi, config.batch_size,
            skipped, config.progress,
        )  # fmt: skip
        patchcore.score_norm.copy_(oof.spreads())
        if all_statistics is not None:
            mean, precision = all_statistics.precision(params.position_eps)
            patchcore.position_mean, patchcore.position_precision = mean.float(), precision.half()
            position_images = all_statistics.count
            all_statistics = None
        if auto:
            position_choice = choose_out_of_fold(patchcore, oof)
        if not patchcore.uses_positions:
            position_images = None
        goods_image, goods_max, painted_image = out_of_fold_scores(patchcore, oof)
        calibration_scores = (goods_image, goods_max)
        curve = OperatingCurve(
            goods="cross-fitted",
            defects="painted",
            good_scores=goods_image.tolist(),
            defect_scores=painted_image.tolist(),
        )
        model, params = patchcore, patchcore.params
    elif config.detector == "patchcore":
        fixed = 0.0 if config.position_weight == "auto" else float(config.position_weight)
        params = PatchCoreParams(
            coreset_ratio=config.coreset_ratio,
            layer_weights=config.layer_weights,
            position_weight=AUTO_FIT_WEIGHT if auto else fixed,
            seed=config.seed,
        )
        patchcore = fit_patchcore(
            extractor, batches, len(fit_paths), config.image_size, params, config.progress, statistics
        )
        release_free_memory()  # each phase of the fit frees what it used; see memory.py
        if patchcore.position_mean.numel():
            held = score_held_out(
                patchcore, _batches(holdout_paths, config, skipped, "held-out scores"), statistics
            )
            patchcore.score_norm.copy_(score_spreads(held))
        if auto and held is not None:
            release_free_memory()  # what the held-out pass freed
            with statistics.parked() if statistics is not None else nullcontext():
                position_choice = choose_position_weight(patchcore, held, config)
        model, params = patchcore, patchcore.params  # as fitted, e.g. the balanced layer weights
    elif config.detector == "spade":
        params = SpadeParams(seed=config.seed)
        model = fit_spade(extractor, batches, len(fit_paths), config.image_size, params)
    elif config.detector == "destseg":
        model, destseg_info = train_destseg(config, extractor, fit_paths, holdout_paths, skipped)
        params = model.params  # type: ignore[assignment]
    elif config.detector == "diffusion":
        if base is not None:
            model, diffusion_info = train_adapter(config, base, fit_paths, holdout_paths, skipped)
        else:
            model, diffusion_info = train_diffusion(config, extractor, fit_paths, holdout_paths, skipped)
        params = model.params  # type: ignore[assignment]
    else:
        raise ValueError(
            f"unknown detector {config.detector!r}; choose patchcore, spade, destseg or diffusion"
        )
    model.eval()
    release_free_memory()
    image_scores, map_maxima = [], []
    with torch.inference_mode():
        if calibration_scores is not None:
            image_scores, map_maxima = [calibration_scores[0]], [calibration_scores[1]]
        elif held is not None and isinstance(model, PatchCoreModel) and model.uses_positions:
            for start in range(0, len(held.paths), config.batch_size):
                part = slice(start, start + config.batch_size)
                scores, maps, _ = model.blended_scores(held.patch[part], held.position[part], held.grid)
                image_scores.append(scores.numpy())
                map_maxima.append(maps.amax(dim=(1, 2)).numpy())
        else:  # the held-out images were not scored yet, or the choice dropped the positions
            seen = [] if held is not None else skipped  # the held-out pass listed its skipped files
            for batch in _batches(holdout_paths, config, seen, "calibration"):
                scores, maps, _ = model(batch.images)
                image_scores.append(scores.numpy())
                map_maxima.append(maps.amax(dim=(1, 2)).numpy())
    if not image_scores:
        raise DatasetError("no held-out image could be decoded, cannot calibrate")
    good_scores = np.concatenate(image_scores)
    image_calibration = fit_threshold(good_scores, config.target_fpr, config.confidence)
    pixel_calibration = fit_threshold(np.concatenate(map_maxima), config.target_fpr, config.confidence)
    if curve is None:
        curve = OperatingCurve(
            goods="held-out",
            defects="painted",
            good_scores=good_scores.tolist(),
            defect_scores=painted_scores(model, holdout_paths, config).tolist(),
        )
    band = review_band(good_scores, image_calibration.threshold, config.review_fpr, config.confidence)
    if crossfit:
        pass  # the position statistics hold every image already
    elif isinstance(model, PatchCoreModel) and model.uses_positions and not config.fold_holdout:
        position_images = len(fit_paths) - len([s for s in skipped if Path(s.path) in set(fit_paths)])
    elif isinstance(model, PatchCoreModel) and model.uses_positions and statistics is not None:
        # Calibrated, the held-out images join the Gaussians (as PaDiM fits on every good image).
        # Out-of-sample Mahalanobis distances shrink as the estimate rests on more images, so the
        # thresholds set on the held-out scores of the smaller estimate stay on the safe side.
        model.set_position_statistics(*statistics.precision(model.params.position_eps))
        position_images = statistics.count
    statistics = None
    skipped_paths = {s.path for s in skipped}
    fit_seconds = time.perf_counter() - started
    fingerprint = training_fingerprint([p for p in paths if str(p) not in skipped_paths])
    created = now_iso()
    card_fields = {
        "name": f"{config.category}-{config.detector}",
        "version": model_version(created, fingerprint),
        "kind": config.detector,
        "backbone": base[1].backbone if base is not None else config.backbone,
        "layers": layers,
        "activation": base[1].activation if base is not None else config.activation,
        "image_size": config.image_size,
        "roi": config.roi,
        "params": params_dict(params),
        "image_calibration": image_calibration,
        "pixel_calibration": pixel_calibration,
        "defect_rules": config.defect_rules,
        "review": band,
        "operating": curve,
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
            position_images=position_images,
            destseg=destseg_info,
            diffusion=diffusion_info,
            folds=config.folds if crossfit else None,
        ),
    }
    release_free_memory()
    card = save_artifact(model, card_fields, config.out_dir)
    shutil.rmtree(Path(config.out_dir) / "checkpoints", ignore_errors=True)  # the artifact holds the best
    return card
