"""Choosing the position weight on painted defects: the informative component wins.

The model here is a stand-in (no backbone): its two distances are computed from how far each patch
of the image is from the flat grey good part, so which of them sees the defects is known."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from services.commands.vision import position_weight
from services.vision.dataset import IMAGENET_MEAN, IMAGENET_STD, preprocess
from services.vision.patchcore import PatchCoreParams
from services.vision.position_choice import (
    PAINTED_PER_IMAGE,
    TOP_SHARES,
    WEIGHTS,
    choose_blend,
    validation_image,
)
from services.vision.train import TrainConfig, train

SIZE, GRID, GREY = 64, 8, 128


def goods(n: int = 12) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [np.clip(GREY + rng.normal(0, 2, (SIZE, SIZE, 3)), 0, 255).astype(np.uint8) for _ in range(n)]


@dataclass
class TwoComponents:
    """``component_scores`` as PatchCoreModel's: the deviation from grey per patch goes to the
    ``informed`` component; the other gets noise."""

    informed: str
    image_size: int = SIZE
    params: PatchCoreParams = field(default_factory=PatchCoreParams)
    position_mean: torch.Tensor = field(default_factory=lambda: torch.zeros(1))
    score_norm: torch.Tensor = field(default_factory=lambda: torch.ones(2))
    generator: torch.Generator = field(default_factory=lambda: torch.Generator().manual_seed(0))

    def component_scores(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        pixels = (images * std + mean) * 255
        deviation = F.avg_pool2d((pixels - GREY).abs().mean(1, keepdim=True), SIZE // GRID).flatten(1)
        noise = torch.rand(deviation.shape, generator=self.generator) * deviation.max()
        informed = deviation + 0.05 * noise
        return (
            (informed, noise, (GRID, GRID)) if self.informed == "patch" else (noise, informed, (GRID, GRID))
        )


@pytest.mark.parametrize("informed", ["patch", "position"])
def test_the_weight_goes_to_the_component_that_sees_the_defects(informed: str) -> None:
    choice = choose_blend(TwoComponents(informed), goods(), seed=1)  # type: ignore[arg-type]
    assert len(choice.table) == len(WEIGHTS) * len(TOP_SHARES)
    assert (choice.n_good, choice.n_painted) == (12, 12 * PAINTED_PER_IMAGE)
    best = max(row["mean"] for row in choice.table)
    chosen = [
        r
        for r in choice.table
        if (r["weight"], r["top_share"]) == (choice.position_weight, choice.image_top_share)
    ]
    assert chosen[0]["mean"] == best
    if informed == "patch":
        assert choice.position_weight <= 0.2
    else:
        assert choice.position_weight >= 0.8
    assert best > 0.9  # the painted defects are found


@dataclass
class CountingComponents(TwoComponents):
    scored: int = 0

    def component_scores(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        self.scored += len(images)
        return super().component_scores(images)


def test_goods_already_scored_are_not_scored_again() -> None:
    model = CountingComponents("position")
    images = goods()
    patch, position, _ = model.component_scores(torch.stack([preprocess(image, SIZE) for image in images]))
    model.scored = 0
    choice = choose_blend(model, images, seed=1, good_scores=(patch, position))  # type: ignore[arg-type]
    assert model.scored == 12 * PAINTED_PER_IMAGE  # the painted copies only
    assert (choice.n_good, choice.n_painted) == (12, 12 * PAINTED_PER_IMAGE)
    assert choice.position_weight >= 0.8
    with pytest.raises(ValueError, match="hold 11 images, not the 12 goods"):
        choose_blend(model, images, good_scores=(patch[:11], position[:11]))  # type: ignore[arg-type]


def test_the_validation_set_is_the_goods_then_painted_copies_the_same_every_time() -> None:
    images = goods(4)
    image, mask = validation_image(images, 2, seed=3)
    assert image is images[2] and not mask.any()
    painted, painted_mask = validation_image(images, 4 + 2, seed=3)
    again, again_mask = validation_image(images, 4 + 2, seed=3)
    assert painted_mask.any() and np.array_equal(painted, again) and np.array_equal(painted_mask, again_mask)
    with pytest.raises(ValueError, match="2 or more held-out good images"):
        validation_image(images[:1], 0, seed=3)


def test_a_model_without_position_statistics_is_refused() -> None:
    model = TwoComponents("patch", position_mean=torch.empty(0))
    with pytest.raises(ValueError, match="no position statistics"):
        choose_blend(model, goods())  # type: ignore[arg-type]


def test_the_command_line_takes_auto_or_a_share() -> None:
    assert position_weight("auto") == "auto" and position_weight("0.55") == 0.55
    for bad in ("1.5", "-0.1", "half"):
        with pytest.raises(argparse.ArgumentTypeError, match=r"auto or a number|share from 0 to 1"):
            position_weight(bad)


def test_a_position_weight_for_another_detector_is_refused(tmp_path: Path) -> None:
    config = TrainConfig(
        data_root=tmp_path, category="x", out_dir=tmp_path, detector="spade", position_weight=0.5
    )
    with pytest.raises(ValueError, match="PatchCore setting"):
        train(config)


def test_the_help_states_the_held_out_minimum_that_auto_needs(capsys: pytest.CaptureFixture[str]) -> None:
    """``train --help`` names the minimum literally (the parser is built without importing torch)."""
    from services.cli import main
    from services.vision.train import MIN_AUTO_HOLDOUT

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "auto (default) = chosen on the held-out good images" in help_text
    assert f"0 when fewer than {MIN_AUTO_HOLDOUT} are held out" in help_text
