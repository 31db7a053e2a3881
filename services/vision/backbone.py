"""Pretrained torchvision backbones as multi-layer feature extractors.

Any torchvision classification model can be named; weights come from a local ``state_dict`` file
(air-gapped plants) or from torchvision's own download cache. ``activation="relu"`` replaces every
activation module with ``nn.ReLU`` (needed for weights taken from a quantised model, whose
activations were plain ReLU).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import torch
import torchvision
from torch import nn
from torch.fx import GraphModule
from torch.nn.utils.fusion import fuse_conv_bn_eval
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

from services.vision.tracing import TRACE_GUARD

# Layers that work well for patch-level anomaly detection: mid-level, stride 8 and 16.
DEFAULT_LAYERS: dict[str, list[str]] = {
    "mobilenet_v2": ["features.6", "features.13"],
    "mobilenet_v3_large": ["features.6", "features.12"],
    "resnet18": ["layer2", "layer3"],
    "resnet34": ["layer2", "layer3"],
    "resnet50": ["layer2", "layer3"],
    "wide_resnet50_2": ["layer2", "layer3"],
    "wide_resnet101_2": ["layer2", "layer3"],
    "efficientnet_b0": ["features.3", "features.5"],
    "efficientnet_b4": ["features.3", "features.5"],
}

ACTIVATIONS: dict[str, type[nn.ReLU]] = {"relu": nn.ReLU}
_REPLACEABLE = (nn.ReLU, nn.ReLU6, nn.SiLU, nn.Hardswish, nn.GELU, nn.LeakyReLU, nn.ELU, nn.Mish)


class BackboneError(ValueError):
    """A backbone, layer or weights file that cannot be used."""


def default_layers(name: str) -> list[str]:
    if name in DEFAULT_LAYERS:
        return list(DEFAULT_LAYERS[name])
    if name.startswith("efficientnet"):
        return ["features.3", "features.5"]
    raise BackboneError(f"no default layers for backbone {name!r}; pass them explicitly (--layers ...)")


def replace_activations(module: nn.Module, activation: str) -> int:
    """Replace every activation module under ``module`` in place; return how many were replaced."""
    if activation not in ACTIVATIONS:
        raise BackboneError(f"unknown activation {activation!r}; choose from {sorted(ACTIVATIONS)}")
    factory = ACTIVATIONS[activation]
    count = 0
    for name, child in module.named_children():
        if isinstance(child, _REPLACEABLE):
            setattr(module, name, factory(inplace=bool(getattr(child, "inplace", False))))
            count += 1
        else:
            count += replace_activations(child, activation)
    return count


def load_classifier(name: str, weights_path: Path | None = None) -> nn.Module:
    if name not in torchvision.models.list_models(module=torchvision.models):
        raise BackboneError(f"{name!r} is not a torchvision classification model")
    if weights_path is None:
        try:
            return torchvision.models.get_model(name, weights="DEFAULT")
        except Exception as err:  # no network, no cache
            raise BackboneError(
                f"cannot get pretrained weights for {name!r} from torchvision's cache ({err}); "
                "on an air-gapped machine pass a local state_dict with --weights PATH"
            ) from err
    path = Path(weights_path)
    if not path.is_file():
        raise BackboneError(f"weights file {path} does not exist")
    model = torchvision.models.get_model(name, weights=None)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise BackboneError(f"cannot read weights file {path}: {err}") from err
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise BackboneError(f"weights in {path} do not match {name!r}: {str(err)[:400]}") from err
    return model


class FeatureExtractor(nn.Module):
    """A frozen backbone truncated after the deepest requested layer; returns maps in layer order."""

    def __init__(self, model: nn.Module, layers: list[str], max_chunk: int = 4) -> None:
        super().__init__()
        self.max_chunk = max_chunk  # images per backbone pass: bounds activation memory, not throughput
        with TRACE_GUARD.exclusive():  # (fx tracing patches every module's __call__: see tracing.py)
            self._trace(model, layers)

    def _trace(self, model: nn.Module, layers: list[str]) -> None:
        nodes = set(get_graph_node_names(model)[1])
        missing = [
            layer for layer in layers if not any(n == layer or n.startswith(layer + ".") for n in nodes)
        ]
        if missing:
            hints = sorted({".".join(n.split(".")[:2]) for n in nodes})[:40]
            raise BackboneError(f"layers {missing} are not in the backbone; some valid names: {hints}")
        self.layers = list(layers)
        body = create_feature_extractor(model, return_nodes={layer: layer for layer in layers}).eval()
        # a plain single-graph module holding only what the eval graph uses
        self.body = fold_batch_norms(GraphModule(body, body.graph).eval().requires_grad_(False))

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        images = images.contiguous(memory_format=torch.channels_last)
        chunks = [self.body(chunk) for chunk in images.split(self.max_chunk)]
        if len(chunks) == 1:
            return [chunks[0][layer] for layer in self.layers]
        return [torch.cat([chunk[layer] for chunk in chunks]) for layer in self.layers]


def untrained_feature_extractor(name: str, layers: list[str], activation: str | None) -> FeatureExtractor:
    """The extractor's structure without weights (an artifact loads its own stored weights into it)."""
    if name not in torchvision.models.list_models(module=torchvision.models):
        raise BackboneError(f"{name!r} is not a torchvision classification model")
    model = torchvision.models.get_model(name, weights=None)
    if activation:
        replace_activations(model, activation)
    extractor = FeatureExtractor(model.eval(), layers)
    return extractor.to(memory_format=torch.channels_last)


def fold_batch_norms(graph: GraphModule) -> GraphModule:
    """Fold every eval-mode BatchNorm that directly follows a convolution into that convolution.

    Inference-only and exact up to float rounding; it removes a full pass over every activation.
    The folded structure is deterministic, so weights saved from it load into a fresh extractor.
    """
    for sequence in [m for m in graph.modules() if isinstance(m, nn.Sequential)]:
        names = list(sequence._modules)
        for first, second in itertools.pairwise(names):
            conv, norm = sequence._modules[first], sequence._modules[second]
            if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d):
                conv.training = norm.training = False
                sequence._modules[first] = fuse_conv_bn_eval(conv, norm)
                sequence._modules[second] = nn.Identity()
    modules = dict(graph.named_modules())
    for node in list(graph.graph.nodes):
        if node.op != "call_module" or not isinstance(modules.get(node.target), nn.BatchNorm2d):
            continue
        source = node.args[0]
        if (
            not isinstance(source, torch.fx.Node)
            or source.op != "call_module"
            or not isinstance(modules.get(source.target), nn.Conv2d)
            or len(source.users) != 1
        ):
            continue
        conv, norm = modules[source.target], modules[node.target]
        conv.training = norm.training = False
        fused = fuse_conv_bn_eval(conv, norm)
        parent_name, _, attr = str(source.target).rpartition(".")
        setattr(graph.get_submodule(parent_name) if parent_name else graph, attr, fused)
        node.replace_all_uses_with(source)
        graph.graph.erase_node(node)
        graph.delete_submodule(str(node.target))
    graph.graph.lint()
    graph.recompile()
    return graph


def build_feature_extractor(
    name: str,
    layers: list[str] | None = None,
    weights_path: Path | None = None,
    activation: str | None = None,
) -> FeatureExtractor:
    model = load_classifier(name, weights_path)
    if activation:
        replace_activations(model, activation)
    model.eval()
    extractor = FeatureExtractor(model, layers or default_layers(name))
    return extractor.to(memory_format=torch.channels_last)
