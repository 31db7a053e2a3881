"""Model artifacts: a directory with ``weights.safetensors`` and ``card.json``.

The weights file holds every tensor the detector needs, the backbone's own weights included, so
an artifact loads the same way on the line PC, in Triton's Python backend and in a test, with no
download and no path to the original backbone file. The card says what the model is, how it was
trained and calibrated, and what it needs; loading checks it against the weights and fails with a
clear message when anything does not match.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import struct
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from safetensors.torch import load_file
from torch import nn

from services.vision.backbone import FeatureExtractor, untrained_feature_extractor
from services.vision.calibration import Calibration
from services.vision.defects import DefectRules
from services.vision.destseg import DestsegModel, DestsegParams, build_destseg
from services.vision.diffusion.model import DiffusionModel, DiffusionParams
from services.vision.ensemble import MEMBERS_DIR, EnsembleModel, EnsembleParams
from services.vision.operating import CameraCalibration, OperatingCurve, ReviewBand
from services.vision.patchcore import PatchCoreModel, PatchCoreParams
from services.vision.spade import SpadeModel, SpadeParams

FORMAT_VERSION = 1
WEIGHTS_FILE = "weights.safetensors"
CARD_FILE = "card.json"
DetectorKind = Literal["patchcore", "spade", "destseg", "diffusion", "ensemble"]
SAFETENSORS_DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


class ArtifactError(ValueError):
    """A model directory that cannot be loaded; the message says why."""


class TrainingInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")

    data_root: str
    category: str
    n_images: int  # usable training images found
    n_fit: int  # used to fit
    n_holdout: int  # held out for calibration
    skipped: list[dict[str, str]]
    fingerprint: str  # sha256 over the training files' names and contents
    fit_seconds: float
    created_at: str
    # ``--position-weight auto``: the weight and top share chosen on held-out good images and painted
    # copies of them, with every candidate's scores (services/vision/position_choice.py)
    position_choice: dict[str, Any] | None = None
    # good images the per-position Gaussians were estimated on: the fitted ones and, after the
    # calibration, the held-out ones (None: no position statistics, or a card from before this)
    position_images: int | None = None
    # DeSTSeg: both stages' steps, losses, validation and early stopping, the device trained on
    destseg: dict[str, Any] | None = None
    # diffusion: the denoiser's steps, losses, validation, device and map scales
    diffusion: dict[str, Any] | None = None
    # ensemble: its members (kind, version, weights' sha256, fit time) and how many held-out good
    # images went past the pre-screen
    ensemble: dict[str, Any] | None = None
    # cross-fitting (PatchCore): the folds every good image was scored out of sample in; then
    # n_fit is every usable image and n_holdout 0 (services/vision/crossfit.py)
    folds: int | None = None


class ModelCard(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format_version: int = FORMAT_VERSION
    name: str
    version: str
    kind: DetectorKind
    backbone: str
    layers: list[str]
    activation: str | None
    image_size: int
    roi: tuple[int, int, int, int] | None = None
    params: dict[str, Any]
    image_calibration: Calibration
    pixel_calibration: Calibration
    defect_rules: DefectRules = DefectRules()
    # the REVIEW band below the NG threshold, and the scores the thresholds were set on with the
    # estimated rates they imply (services/vision/operating.py); None on cards from before them
    review: ReviewBand | None = None
    operating: OperatingCurve | None = None
    # cameras with thresholds of their own, set on their recent good frames (linewatch calibrate --camera)
    cameras: dict[str, CameraCalibration] = {}
    training: TrainingInfo
    versions: dict[str, str]
    tensors: dict[str, list[int]]
    weights_sha256: str


def library_versions() -> dict[str, str]:
    import numpy
    import torchvision

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": numpy.__version__,
    }


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    if isinstance(model, EnsembleModel):  # the members are artifacts of their own, in members/
        return {
            "map_weights": torch.tensor(model.params.map_weights, dtype=torch.float32),
            "image_weights": torch.tensor(model.params.image_weights, dtype=torch.float32),
        }
    if not isinstance(model, PatchCoreModel | SpadeModel | DestsegModel | DiffusionModel):
        raise TypeError(f"cannot save a {type(model).__name__}")
    tensors = {f"backbone.{k}": v for k, v in model.extractor.body.state_dict().items()}
    if isinstance(model, DiffusionModel):
        from services.vision.diffusion.lora import adapter_state, base_state

        tensors.update({f"unet.{k}": v for k, v in base_state(model.unet).items()})
        own = model.params.lora
        if own is not None:  # an adapter's artifact: its own LoRA weights and the base's map scales
            tensors.update({f"lora.{k}": v for k, v in adapter_state(model.unet, own["name"]).items()})
            tensors["base_map_scale"] = (
                model.base_map_scale if model.base_map_scale is not None else model.map_scale
            )
        if model.autoencoder is not None:
            tensors.update({f"autoencoder.{k}": v for k, v in model.autoencoder.state_dict().items()})
        scale = model.adapters[own["name"]][1] if own is not None else model.map_scale
        tensors.update(latent_mean=model.latent_mean, latent_std=model.latent_std, map_scale=scale)
        if model.segmenter is not None:
            tensors.update({f"segmenter.{k}": v for k, v in model.segmenter.state_dict().items()})
    elif isinstance(model, DestsegModel):
        tensors.update({f"student.{k}": v for k, v in model.student.state_dict().items()})
        tensors.update({f"segmenter.{k}": v for k, v in model.segmenter.state_dict().items()})
    elif isinstance(model, PatchCoreModel):
        tensors["memory_bank"] = model.memory_bank
        if model.projection.numel():
            tensors["projection"] = model.projection
        if model.position_mean.numel():
            tensors["position_mean"] = model.position_mean
            tensors["position_precision"] = model.position_precision
            tensors["score_norm"] = model.score_norm
    else:
        tensors["descriptors"] = model.descriptors
        for i in range(model.n_layers):
            tensors[f"gallery_{i}"] = model.gallery_layer(i)
    return {k: v.detach().contiguous().cpu() for k, v in tensors.items()}


def write_safetensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """Write ``tensors`` (contiguous, on the CPU) to ``path`` in the safetensors format, streaming each
    tensor's memory to the file.

    ``safetensors.torch.save_file`` first copies every tensor into a bytes object: with per-position
    statistics that is 45 MB more at the very end of a fit, where the peak RSS is. The format is an
    8-byte little-endian header length, a JSON header (name → dtype, shape, byte offsets, plus
    ``__metadata__``) padded with spaces to a multiple of 8, then the tensors' bytes; the result is
    read back by ``safetensors.torch.load_file``."""
    header: dict[str, Any] = {"__metadata__": metadata}
    offset = 0
    for name, tensor in tensors.items():
        if tensor.dtype not in SAFETENSORS_DTYPES:
            raise TypeError(f"cannot write tensor {name} of dtype {tensor.dtype} to safetensors")
        size = tensor.numel() * tensor.element_size()
        header[name] = {
            "dtype": SAFETENSORS_DTYPES[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    with open(path, "wb") as out:
        out.write(struct.pack("<Q", len(encoded)))
        out.write(encoded)
        for tensor in tensors.values():
            if tensor.numel():
                flat = tensor.contiguous().reshape(-1)
                if flat.dtype in (torch.bfloat16, torch.bool):
                    flat = flat.view(torch.int16 if flat.dtype == torch.bfloat16 else torch.uint8)
                out.write(flat.numpy().data)  # the tensor's own memory, no copy


def save_artifact(model: nn.Module, card_fields: dict[str, Any], out_dir: Path) -> ModelCard:
    """Write weights then card (atomically) into ``out_dir``; returns the card written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = model_tensors(model)
    weights_tmp = out_dir / f".{WEIGHTS_FILE}.tmp"
    write_safetensors(
        tensors, weights_tmp, metadata={"format": "linewatch", "format_version": str(FORMAT_VERSION)}
    )
    os.replace(weights_tmp, out_dir / WEIGHTS_FILE)
    card = ModelCard(
        **card_fields,
        versions=library_versions(),
        tensors={k: list(v.shape) for k, v in tensors.items()},
        weights_sha256=file_sha256(out_dir / WEIGHTS_FILE),
    )
    write_card(card, out_dir)
    return card


def write_card(card: ModelCard, model_dir: Path) -> None:
    """Write ``card.json`` atomically (e.g. thresholds re-set by ``linewatch calibrate``)."""
    card_tmp = Path(model_dir) / f".{CARD_FILE}.tmp"
    card_tmp.write_text(card.model_dump_json(indent=2) + "\n")
    os.replace(card_tmp, Path(model_dir) / CARD_FILE)


def read_card(model_dir: Path) -> ModelCard:
    model_dir = Path(model_dir)
    card_path = model_dir / CARD_FILE
    if not model_dir.is_dir():
        raise ArtifactError(f"model directory {model_dir} does not exist")
    if not card_path.is_file():
        raise ArtifactError(f"{model_dir} is not a linewatch model: no {CARD_FILE}")
    try:
        raw = json.loads(card_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ArtifactError(f"{card_path} is damaged: {err}") from err
    version = raw.get("format_version") if isinstance(raw, dict) else None
    if isinstance(version, int) and version > FORMAT_VERSION:
        raise ArtifactError(
            f"{card_path} has format version {version}; this linewatch reads up to {FORMAT_VERSION}: upgrade"
        )
    try:
        return ModelCard.model_validate(raw)
    except ValidationError as err:
        raise ArtifactError(f"{card_path} is not a valid model card: {err}") from err


def load_artifact(model_dir: Path) -> tuple[nn.Module, ModelCard]:
    """Rebuild the detector from a model directory, checking weights against the card."""
    card = read_card(model_dir)
    weights_path = Path(model_dir) / WEIGHTS_FILE
    if not weights_path.is_file():
        raise ArtifactError(f"{model_dir} has no {WEIGHTS_FILE}")
    if file_sha256(weights_path) != card.weights_sha256:
        raise ArtifactError(
            f"{weights_path} is damaged or was replaced: its sha256 does not match {CARD_FILE}"
        )
    try:
        tensors = load_file(str(weights_path))
    except Exception as err:
        raise ArtifactError(f"cannot read {weights_path}: {err}") from err
    shapes = {k: list(v.shape) for k, v in tensors.items()}
    if shapes != card.tensors:
        raise ArtifactError(f"{weights_path} does not hold the tensors its card lists")
    if card.kind == "ensemble":
        return _load_ensemble(card, Path(model_dir)).eval(), card
    extractor = untrained_feature_extractor(card.backbone, card.layers, card.activation)
    backbone_state = {k.removeprefix("backbone."): v for k, v in tensors.items() if k.startswith("backbone.")}
    try:
        extractor.body.load_state_dict(backbone_state, strict=True)
    except RuntimeError as err:
        raise ArtifactError(f"backbone weights in {weights_path} do not fit {card.backbone}: {err}") from err
    model: nn.Module
    if card.kind == "patchcore":
        patchcore_params = dict(card.params)
        # cards written before the exact search was screened in bfloat16 may carry the old opt-in
        # approximate search; every search is exact now, so the flag has nothing left to choose
        patchcore_params.pop("approximate_search", None)
        # cards written before the geometric blend combined the two distances linearly
        patchcore_params.setdefault("blend", "linear")
        if patchcore_params.get("layer_weights") is not None:
            patchcore_params["layer_weights"] = tuple(patchcore_params["layer_weights"])
        params = PatchCoreParams(**patchcore_params)
        model = PatchCoreModel(
            extractor,
            tensors["memory_bank"],
            card.image_size,
            params,
            tensors.get("projection"),
            tensors.get("position_mean"),
            tensors.get("position_precision"),
            tensors.get("score_norm"),
        )
    elif card.kind == "diffusion":
        model = _load_diffusion(card, extractor, tensors, weights_path)
    elif card.kind == "destseg":
        destseg_params = dict(card.params)
        for key in ("teacher_channels", "teacher_strides"):
            destseg_params[key] = tuple(destseg_params[key])
        destseg = build_destseg(extractor, card.image_size, DestsegParams(**destseg_params))
        for part in ("student", "segmenter"):
            state = {k.removeprefix(f"{part}."): v for k, v in tensors.items() if k.startswith(f"{part}.")}
            try:
                getattr(destseg, part).load_state_dict(state, strict=True)
            except RuntimeError as err:
                raise ArtifactError(
                    f"DeSTSeg {part} weights in {weights_path} do not fit its card: {err}"
                ) from err
        model = destseg
    else:
        spade_params = dict(card.params)
        if spade_params.get("layer_weights") is not None:
            spade_params["layer_weights"] = tuple(spade_params["layer_weights"])
        gallery = [tensors[f"gallery_{i}"] for i in range(len(card.layers))]
        model = SpadeModel(
            extractor, tensors["descriptors"], gallery, card.image_size, SpadeParams(**spade_params)
        )
    return model.eval(), card


def _load_diffusion(
    card: ModelCard, extractor: FeatureExtractor, tensors: dict[str, torch.Tensor], weights_path: Path
) -> nn.Module:
    from services.vision.diffusion.autoencoder import AutoencoderError, TinyAutoencoder
    from services.vision.diffusion.lora import AdapterError, LoraSettings
    from services.vision.diffusion.model import DiffusionModel, build_unet, params_from_card

    params = params_from_card(card.params)

    def part(prefix: str) -> dict[str, torch.Tensor]:
        return {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}

    autoencoder = None
    if params.space == "latent":
        try:
            autoencoder = TinyAutoencoder.from_state_dicts(
                part("autoencoder.encoder."), part("autoencoder.decoder.")
            )
        except (AutoencoderError, KeyError) as err:
            raise ArtifactError(f"the autoencoder in {weights_path} cannot be rebuilt: {err}") from err
    unet = build_unet(params, 0, 0)
    try:
        unet.load_state_dict(part("unet."), strict=True)
    except RuntimeError as err:
        raise ArtifactError(
            f"the denoiser's weights in {weights_path} do not fit its card: {str(err)[:300]}"
        ) from err
    model = DiffusionModel(
        extractor,
        unet,
        autoencoder,
        card.image_size,
        params,
        tensors["latent_mean"],
        tensors["latent_std"],
        tensors.get("base_map_scale", tensors["map_scale"]),
    )
    if model.segmenter is not None:
        try:
            model.segmenter.load_state_dict(part("segmenter."), strict=True)
        except RuntimeError as err:
            raise ArtifactError(
                f"the segmentation head's weights in {weights_path} do not fit its card: {str(err)[:300]}"
            ) from err
    if params.lora is not None:  # an adapter: the base with its LoRA weights, in use
        try:
            settings = LoraSettings.from_dict(params.lora)
            model.add_adapter(
                settings, part("lora."), tensors["map_scale"], params.lora["base_denoiser_sha256"]
            )
        except (AdapterError, KeyError, TypeError, ValueError) as err:
            raise ArtifactError(f"the LoRA adapter in {weights_path} cannot be loaded: {err}") from err
        model.use_adapter(settings.name)
    return model


def load_adapter(model: nn.Module, adapter_dir: Path) -> str:
    """Attach the LoRA adapter of the artifact in ``adapter_dir`` to ``model`` (a diffusion model
    with the same base, already loaded: nothing of the base is read again) with its recipe's map
    scales; returns its name, for :meth:`DiffusionModel.use_adapter`. The adapter's own thresholds
    stay on its card."""
    from services.vision.diffusion.lora import AdapterError, LoraSettings

    if not isinstance(model, DiffusionModel):
        raise ArtifactError(f"LoRA adapters attach to diffusion models, not to a {type(model).__name__}")
    card = read_card(adapter_dir)
    lora = card.params.get("lora") if card.kind == "diffusion" else None
    if lora is None:
        raise ArtifactError(f"{adapter_dir} holds no LoRA adapter (a {card.kind} model)")
    weights_path = Path(adapter_dir) / WEIGHTS_FILE
    if not weights_path.is_file() or file_sha256(weights_path) != card.weights_sha256:
        raise ArtifactError(f"{weights_path} is missing, damaged or was replaced")
    tensors = load_file(str(weights_path))
    settings = LoraSettings.from_dict(lora)
    state = {k.removeprefix("lora."): v for k, v in tensors.items() if k.startswith("lora.")}
    try:
        model.add_adapter(settings, state, tensors["map_scale"], lora["base_denoiser_sha256"])
    except AdapterError as err:
        raise ArtifactError(f"{adapter_dir}: {err}") from err
    return settings.name


def _load_ensemble(card: ModelCard, model_dir: Path) -> EnsembleModel:
    """The members from ``members/``, each checked as an artifact of its own and against the
    versions and weights the ensemble was calibrated with."""
    from services.vision.ensemble import params_from_card

    try:
        params = params_from_card(card.params)
    except (KeyError, TypeError, ValueError) as err:
        raise ArtifactError(f"{model_dir / CARD_FILE} has no valid ensemble settings: {err}") from err
    recorded = {m["name"]: m for m in (card.training.ensemble or {}).get("members", [])}
    models, calibrations = [], []
    for name in params.members:
        member_dir = model_dir / MEMBERS_DIR / name
        try:
            model, member_card = load_artifact(member_dir)
        except ArtifactError as err:
            raise ArtifactError(f"ensemble member {name}: {err}") from err
        expected = recorded.get(name, {}).get("weights_sha256")
        if expected is not None and expected != member_card.weights_sha256:
            raise ArtifactError(
                f"ensemble member {member_dir} was replaced after the ensemble was calibrated; rebuild it"
            )
        if member_card.image_size != card.image_size:
            raise ArtifactError(
                f"ensemble member {name} inspects {member_card.image_size} px, not {card.image_size}"
            )
        models.append(model)
        calibrations.append((member_card.image_calibration, member_card.pixel_calibration))
    return EnsembleModel(models, calibrations, card.image_size, params)


def params_dict(
    params: PatchCoreParams | SpadeParams | DestsegParams | DiffusionParams | EnsembleParams,
) -> dict[str, Any]:
    return asdict(params)


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
