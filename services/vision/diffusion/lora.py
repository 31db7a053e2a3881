"""Per-recipe LoRA adapters on a shared diffusion denoiser (seed 000: a line changeover adapts the
model of good parts in minutes instead of training a new one).

An adapter is a pair of low-rank matrices beside each targeted convolution and attention projection
of the denoiser (peft's LoRA layers, injected into diffusers' ``UNet2DModel``); the base weights stay
frozen and shared. A model holds any number of adapters by name and switches between them, or back
to the bare base, without reloading anything: :meth:`DiffusionModel.use_adapter`. An adapter's
artifact is a full diffusion artifact (base weights included, so it loads anywhere on its own) whose
card names the base it belongs to by the sha256 of the base denoiser's weights, so that it is
refused by a model with another base.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

LORA_TARGETS = ("conv1", "conv2", "to_q", "to_k", "to_v", "to_out.0")


class AdapterError(ValueError):
    """An adapter that does not fit the model it is loaded into; the message says why."""


@dataclass(frozen=True)
class LoraSettings:
    name: str  # the recipe it adapts to
    rank: int = 8
    alpha: int = 8
    targets: tuple[str, ...] = LORA_TARGETS

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("an adapter needs a name")
        if self.rank < 1:
            raise ValueError(f"the LoRA rank must be at least 1, got {self.rank}")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> LoraSettings:
        return cls(
            name=raw["name"], rank=int(raw["rank"]), alpha=int(raw["alpha"]), targets=tuple(raw["targets"])
        )


def attach(unet: nn.Module, settings: LoraSettings) -> None:
    """Inject an adapter (its B matrices zero: the model's output is unchanged until it trains)."""
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(r=settings.rank, lora_alpha=settings.alpha, target_modules=list(settings.targets))
    inject_adapter_in_model(config, unet, adapter_name=settings.name)


def tuner_layers(unet: nn.Module) -> list[Any]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [module for module in unet.modules() if isinstance(module, BaseTunerLayer)]


def activate(unet: nn.Module, name: str | None) -> None:
    """Make ``name`` the adapter in use, or use the bare base (``None``)."""
    for layer in tuner_layers(unet):
        if name is None:
            layer.enable_adapters(False)
        else:
            layer.enable_adapters(True)
            layer.set_adapter(name)


def adapter_state(unet: nn.Module, name: str) -> dict[str, torch.Tensor]:
    from peft.utils import get_peft_model_state_dict

    state: dict[str, torch.Tensor] = get_peft_model_state_dict(unet, adapter_name=name)
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}


def load_adapter_state(unet: nn.Module, name: str, state: dict[str, torch.Tensor]) -> None:
    from peft.utils import set_peft_model_state_dict

    result = set_peft_model_state_dict(unet, state, adapter_name=name)
    unexpected = list(getattr(result, "unexpected_keys", []))
    missing = [k for k in getattr(result, "missing_keys", []) if "lora_" in k and f".{name}." in k]
    if unexpected or missing:
        raise AdapterError(
            f"adapter {name} does not fit this denoiser: unexpected {unexpected[:3]}, missing {missing[:3]}"
        )


def base_state(unet: nn.Module) -> dict[str, torch.Tensor]:
    """The base denoiser's weights under their own names, with or without adapters injected."""
    return {k.replace(".base_layer", ""): v for k, v in unet.state_dict().items() if "lora_" not in k}


def state_sha256(state: dict[str, torch.Tensor]) -> str:
    """sha256 over the tensors' names and bytes, in name order: identifies a base denoiser."""
    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(key.encode())
        digest.update(state[key].detach().cpu().contiguous().float().numpy().tobytes())
    return digest.hexdigest()
