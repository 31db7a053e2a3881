"""DeSTSeg (services/vision/destseg.py): a tiny model trains on the CPU and its losses fall, the
artifact round trip, a NaN loss stops training and keeps the last good checkpoint, and
``linewatch train --detector destseg`` skips and lists unusable images."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

import services.vision.destseg as destseg_module
from services.cli import main
from services.vision.artifact import load_artifact, read_card, save_artifact
from services.vision.backbone import FeatureExtractor, build_feature_extractor
from services.vision.destseg import (
    DESTSEG_LAYERS,
    DestsegModel,
    DestsegParams,
    DestsegTraining,
    TrainingDiverged,
    fit_destseg,
)
from services.vision.synthesis import Synthesiser
from services.vision.train import TrainConfig, load_goods

SIZE = 96


@pytest.fixture(scope="module")
def extractor(mobilenet_weights: Path) -> FeatureExtractor:
    return build_feature_extractor("mobilenet_v2", DESTSEG_LAYERS["mobilenet_v2"], mobilenet_weights, "relu")


@pytest.fixture(scope="module")
def goods(synthetic_data: Path) -> tuple[torch.Tensor, torch.Tensor]:
    paths = sorted((synthetic_data / "synthetic" / "train" / "good").iterdir())
    config = TrainConfig(synthetic_data, "synthetic", Path("unused"), image_size=SIZE, progress=False)
    return load_goods(paths, config, [])


def fit(
    extractor: FeatureExtractor, goods: tuple[torch.Tensor, torch.Tensor], params: DestsegParams, **kw: Any
) -> tuple[DestsegModel, DestsegTraining]:
    images, foregrounds = goods
    return fit_destseg(
        extractor,
        images[:32],
        foregrounds[:32],
        images[32:],
        foregrounds[32:],
        SIZE,
        params,
        Synthesiser(),
        device="cpu",
        progress=False,
        **kw,
    )


@pytest.fixture(scope="module")
def trained(
    extractor: FeatureExtractor, goods: tuple[torch.Tensor, torch.Tensor]
) -> tuple[DestsegModel, DestsegTraining]:
    params = DestsegParams(student_steps=60, segmentation_steps=60, batch_size=4, eval_every=15, patience=10)
    return fit(extractor, goods, params)


def test_a_tiny_destseg_trains_on_the_cpu_and_both_losses_fall(
    trained: tuple[DestsegModel, DestsegTraining],
) -> None:
    model, info = trained
    assert info.device == "cpu" and info.synthesis_images_per_s > 0
    student, segmentation = info.student, info.segmentation
    assert student.steps == 60 and len(student.losses) == 4
    assert student.losses[-1] < 0.8 * student.losses[0]  # the student learns the teacher's features
    assert student.validation[-1] < student.validation[0]
    assert segmentation.losses[-1] < segmentation.losses[0]
    assert model.params.teacher_strides == (4, 8, 16) and model.params.teacher_channels == (24, 32, 96)
    assert not model.training and next(model.student.parameters()).device.type == "cpu"


def test_scores_maps_and_residuals_have_the_shapes_every_runtime_expects(
    trained: tuple[DestsegModel, DestsegTraining], goods: tuple[torch.Tensor, torch.Tensor]
) -> None:
    model, _ = trained
    images = destseg_module.normalise(goods[0][:3])
    with torch.inference_mode():
        scores, maps, embeddings, residuals = model.score_with_residuals(images)
    assert scores.shape == (3,) and maps.shape == (3, SIZE, SIZE) and embeddings.shape == (3, 24 + 32 + 96)
    assert residuals.shape == (3, 24 + 32 + 96, SIZE // 8, SIZE // 8)
    assert ((maps >= 0) & (maps <= 1)).all() and (scores > 0).all()


def test_the_artifact_round_trip_gives_identical_scores(
    trained: tuple[DestsegModel, DestsegTraining],
    goods: tuple[torch.Tensor, torch.Tensor],
    destseg_model_dir: Path,
    tmp_path: Path,
) -> None:
    model, _ = trained
    card = read_card(destseg_model_dir)
    fields = card.model_dump(exclude={"format_version", "versions", "tensors", "weights_sha256"})
    fields.update(image_size=SIZE, params=destseg_module.asdict_params(model.params))
    save_artifact(model, fields, tmp_path / "model")
    loaded, loaded_card = load_artifact(tmp_path / "model")
    assert loaded_card.kind == "destseg" and isinstance(loaded, DestsegModel)
    images = destseg_module.normalise(goods[0][:4])
    with torch.inference_mode():
        expected, got = model(images), loaded(images)
    for a, b in zip(expected, got, strict=True):
        torch.testing.assert_close(a, b)


def test_the_trained_fixture_card_says_how_it_was_trained(destseg_model_dir: Path) -> None:
    card = read_card(destseg_model_dir)
    assert card.kind == "destseg" and card.layers == DESTSEG_LAYERS["mobilenet_v2"]
    assert card.training.destseg is not None
    assert card.training.destseg["student"]["steps"] == 12 and card.training.destseg["device"] == "cpu"
    assert any(name.startswith("student.") for name in card.tensors)
    assert any(name.startswith("segmenter.") for name in card.tensors)
    assert not (destseg_model_dir / "checkpoints").exists()  # the artifact holds the best state


def test_a_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(
    extractor: FeatureExtractor,
    goods: tuple[torch.Tensor, torch.Tensor],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = {"n": 0}
    real_focal = destseg_module.focal_loss

    def turns_nan(prob: torch.Tensor, target: torch.Tensor, gamma: float) -> torch.Tensor:
        calls["n"] += 1
        loss = real_focal(prob, target, gamma)
        return loss * float("nan") if calls["n"] > 12 else loss

    monkeypatch.setattr(destseg_module, "focal_loss", turns_nan)
    params = DestsegParams(student_steps=5, segmentation_steps=40, batch_size=4, eval_every=5)
    with pytest.raises(TrainingDiverged, match=r"segmentation loss became nan at step 13.*kept at") as err:
        fit(extractor, goods, params, checkpoint_dir=tmp_path / "checkpoints")
    kept = tmp_path / "checkpoints" / "segmentation.pt"
    assert str(kept) in str(err.value) and kept.is_file()
    assert torch.load(kept, weights_only=True)["step"] in (5, 10)
    assert (tmp_path / "checkpoints" / "student.pt").is_file()


def test_train_destseg_from_the_command_line_lists_unusable_images(
    synthetic_data: Path, mobilenet_weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    shutil.copytree(synthetic_data / "synthetic" / "train", data / "synthetic" / "train")
    (data / "synthetic" / "train" / "good" / "999.png").write_bytes(b"not an image")
    common = ["--data", str(data), "--category", "synthetic", "--weights", str(mobilenet_weights)]
    common += ["--activation", "relu", "--image-size", str(SIZE)]
    out = tmp_path / "model"
    args = ["train", *common, "--out", str(out), "--detector", "destseg", "--device", "cpu"]
    assert main([*args, "--student-steps", "4", "--segmentation-steps", "4"]) == 0
    printed = capsys.readouterr().out
    assert "DeSTSeg student: 4 steps" in printed and "DeSTSeg segmentation: 4 steps" in printed
    assert "skipped" in printed and "999.png" in printed
    card = read_card(out)
    assert card.kind == "destseg" and [Path(s["path"]).name for s in card.training.skipped] == ["999.png"]
    assert main(["train", *common, "--out", str(tmp_path / "pc"), "--student-steps", "4"]) == 2
    assert "are DeSTSeg settings" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main([*args[:-2], "--device", "cuda", "--student-steps", "1"]) == 2
        assert "no CUDA GPU" in capsys.readouterr().err
