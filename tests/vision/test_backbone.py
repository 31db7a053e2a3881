"""Backbones: names, layers, local weights, activation replacement, batch-norm folding."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.feature_extraction import create_feature_extractor

from services.vision.backbone import (
    BackboneError,
    build_feature_extractor,
    load_classifier,
    replace_activations,
    untrained_feature_extractor,
)


def test_activation_replacement_reaches_every_nested_module() -> None:
    model = torchvision.models.mobilenet_v2()
    n_relu6 = sum(isinstance(m, nn.ReLU6) for m in model.modules())
    assert replace_activations(model, "relu") == n_relu6 == 35
    assert not any(isinstance(m, nn.ReLU6) for m in model.modules())
    assert sum(isinstance(m, nn.ReLU) for m in model.modules()) == n_relu6


@pytest.mark.parametrize(
    ("name", "layers"), [("resnet18", ["layer2", "layer3"]), ("mobilenet_v2", ["features.6"])]
)
def test_folded_batch_norms_give_the_same_features(name: str, layers: list[str]) -> None:
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None)
    for module in model.modules():  # non-trivial statistics, so folding has something to do
        if isinstance(module, nn.BatchNorm2d):
            assert module.running_mean is not None and module.running_var is not None
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
    model.eval()
    reference = create_feature_extractor(model, {layer: layer for layer in layers}).eval()
    extractor = untrained_feature_extractor(name, layers, None)
    extractor.body.load_state_dict({k: v for k, v in _folded_state(model, layers).items()}, strict=True)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in extractor.modules())
    images = torch.randn(2, 3, 96, 96)
    with torch.inference_mode():
        got = extractor(images)
        want = reference(images)
    for layer, tensor in zip(layers, got, strict=True):
        assert torch.allclose(tensor, want[layer], atol=1e-4, rtol=1e-4)


def _folded_state(model: nn.Module, layers: list[str]) -> dict[str, torch.Tensor]:
    from services.vision.backbone import FeatureExtractor

    return FeatureExtractor(model, layers).body.state_dict()


def test_local_weights_load_strictly(tmp_path: Path) -> None:
    state = torchvision.models.resnet18().state_dict()
    path = tmp_path / "resnet18.pth"
    torch.save(state, path)
    model = load_classifier("resnet18", path)
    assert torch.equal(model.state_dict()["fc.weight"], state["fc.weight"])
    with pytest.raises(BackboneError, match="do not match 'resnet34'"):
        load_classifier("resnet34", path)


def test_missing_or_corrupt_weights_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(BackboneError, match="does not exist"):
        load_classifier("resnet18", tmp_path / "nope.pth")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(BackboneError, match="cannot read weights file"):
        load_classifier("resnet18", bad)


def test_unknown_names_and_layers_are_clear_errors() -> None:
    with pytest.raises(BackboneError, match="not a torchvision classification model"):
        untrained_feature_extractor("resnet_9000", ["layer2"], None)
    with pytest.raises(BackboneError, match=r"layers \['layer9'\] are not in the backbone"):
        untrained_feature_extractor("resnet18", ["layer2", "layer9"], None)
    with pytest.raises(BackboneError, match="unknown activation"):
        replace_activations(nn.Sequential(nn.ReLU()), "swish")


def test_shared_mobilenet_gives_strided_feature_maps(mobilenet_weights: Path) -> None:
    extractor = build_feature_extractor("mobilenet_v2", None, mobilenet_weights, "relu")
    with torch.inference_mode():
        maps = extractor(torch.randn(1, 3, 256, 256))
    assert [tuple(m.shape) for m in maps] == [(1, 32, 32, 32), (1, 96, 16, 16)]
