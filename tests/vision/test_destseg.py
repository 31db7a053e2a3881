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
from services.vision.dataset import DatasetError
from services.vision.destseg import (
    DESTSEG_LAYERS,
    DestsegModel,
    DestsegParams,
    DestsegTraining,
    TrainingDiverged,
    _mix_generated,
    fit_destseg,
)
from services.vision.synthesis import Synthesiser, SynthesisSettings
from services.vision.synthetic_set import GeneratedDefects, load_generated, write_synthetic_set
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


def _painted(goods: tuple[torch.Tensor, torch.Tensor], count: int) -> GeneratedDefects:
    """Stand-ins for generated defects (painted ones): what stage 2 does with them is under test
    here, not how they were made (the diffusion generator has its own tests)."""
    images, foregrounds = goods
    drawn = Synthesiser(SynthesisSettings(method="paint")).apply(
        images[:count], torch.Generator().manual_seed(3), foregrounds[:count]
    )
    return GeneratedDefects(drawn.images, drawn.masks, "painted", "paint", ["a/000.png"], 0)


def test_mixing_replaces_the_chosen_share_of_drawn_defects_and_leaves_clean_images_clean() -> None:
    noisy = torch.zeros(6, 3, 8, 8, dtype=torch.uint8)
    masks = torch.zeros(6, 8, 8, dtype=torch.bool)
    masks[:4, 2:4, 2:4] = True  # four images carry a drawn defect, two are clean
    generated = (torch.full((3, 3, 8, 8), 200, dtype=torch.uint8), torch.ones(3, 8, 8, dtype=torch.bool))
    rng = torch.Generator().manual_seed(0)
    all_of_them, all_masks = _mix_generated(noisy, masks, generated, 1.0, rng)
    assert (all_of_them[:4] == 200).all() and all_masks[:4].all()
    assert (all_of_them[4:] == 0).all() and not all_masks[4:].any()  # clean images stay clean
    none, none_masks = _mix_generated(noisy, masks, generated, 0.0, rng)
    assert torch.equal(none, noisy) and torch.equal(none_masks, masks)
    assert (noisy == 0).all()  # the caller's batch is not changed in place


def test_a_new_head_learns_from_generated_defects_on_a_reused_student(
    extractor: FeatureExtractor,
    goods: tuple[torch.Tensor, torch.Tensor],
    trained: tuple[DestsegModel, DestsegTraining],
) -> None:
    model, _ = trained
    state = {k: v.clone() for k, v in model.student.state_dict().items()}
    params = DestsegParams(student_steps=60, segmentation_steps=20, batch_size=4, eval_every=10, patience=10)
    generated = _painted(goods, 20)
    again, info = fit(extractor, goods, params, generated=generated, student=(state, "the fixture"))
    assert info.student.steps == 0 and info.student_from == "the fixture"  # stage 1 skipped
    assert all(torch.equal(v, state[k]) for k, v in again.student.state_dict().items())
    assert info.segmentation.steps == 20 and info.segmentation.losses[-1] < info.segmentation.losses[0]
    assert info.generated is not None
    assert info.generated["images"] == 16 and info.generated["validation_images"] == 4  # every fifth
    assert info.generated["seed_defects"] == ["a/000.png"] and info.generated["share"] == 0.5
    wrong = GeneratedDefects(generated.images[:, :, :64, :64], generated.masks[:, :64, :64], "x", "x", [], 0)
    with pytest.raises(ValueError, match="expected"):
        fit(extractor, goods, params, generated=wrong, student=(state, "the fixture"))


def test_a_generated_set_loads_without_the_defects_drawn_on_held_out_goods(
    synthetic_data: Path, tmp_path: Path
) -> None:
    report = write_synthetic_set(
        synthetic_data, "synthetic", tmp_path, 12, split="train", size=SIZE, copy_goods=False, progress=False
    )
    goods_used = [Path(item["good"]) for item in report.images]
    held_out = goods_used[:2]
    loaded = load_generated(tmp_path / "synthetic", SIZE, held_out)
    assert loaded.left_out == 2 and loaded.images.shape == (10, 3, SIZE, SIZE)
    assert loaded.masks.shape == (10, SIZE, SIZE) and all(bool(m.any()) for m in loaded.masks)
    assert loaded.method == "perlin" and loaded.seed_defects == []
    smaller = load_generated(tmp_path / "synthetic", 64)  # resized to the model's size
    assert smaller.images.shape[-1] == 64 and smaller.masks.shape[-1] == 64
    with pytest.raises(DatasetError, match=r"no synthetic\.json"):
        load_generated(synthetic_data / "synthetic", SIZE)


def test_train_destseg_with_generated_defects_and_a_reused_student_from_the_command_line(
    synthetic_data: Path,
    mobilenet_weights: Path,
    destseg_model_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    write_synthetic_set(synthetic_data, "synthetic", tmp_path / "gen", 12, split="train", progress=False)
    common = ["--data", str(synthetic_data), "--category", "synthetic", "--weights", str(mobilenet_weights)]
    common += ["--activation", "relu", "--image-size", "128", "--device", "cpu"]
    out = tmp_path / "model"
    extra = ["--generated", str(tmp_path / "gen" / "synthetic"), "--student-from", str(destseg_model_dir)]
    args = ["train", *common, "--out", str(out), "--detector", "destseg", *extra]
    assert main([*args, "--segmentation-steps", "4"]) == 0
    printed = capsys.readouterr().out
    assert f"reused from {destseg_model_dir}" in printed and "generated defects:" in printed
    trained = read_card(out).training.destseg
    assert trained is not None and trained["student"]["steps"] == 0
    assert trained["generated"]["images"] + trained["generated"]["validation_images"] <= 12
    model, _ = load_artifact(out)
    reused, _ = load_artifact(destseg_model_dir)
    assert isinstance(model, DestsegModel) and isinstance(reused, DestsegModel)
    for key, value in model.student.state_dict().items():
        assert torch.equal(value, reused.student.state_dict()[key])
    assert main(["train", *common[:-2], "--out", str(tmp_path / "pc"), *extra[:2]]) == 2
    assert "are DeSTSeg settings" in capsys.readouterr().err
    wrong_size = ["96" if a == "128" else str(tmp_path / "m96") if a == str(out) else a for a in args]
    assert main(wrong_size) == 2
    assert "was trained at 128 px" in capsys.readouterr().err
