"""The ensemble (ensemble.py, ensemble_build.py): fusion in calibrated units, the cascade's routing
and pre-screen level, the checks on its members, the artifact round trip and the CLI's guards.

Real detectors trained on the synthetic line (the session's PatchCore + DeSTSeg ensemble, whose
pre-screen passes half the good frames); the accuracy on the shared sets is measured in
benchmarks/ensemble.py."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from services.cli import main
from services.ingest.synthetic import SyntheticLine
from services.vision.artifact import ArtifactError, load_artifact, read_card
from services.vision.ensemble import (
    MEMBERS_DIR,
    EnsembleModel,
    calibrated_z,
    ensemble_params,
    prescreen_level,
)
from services.vision.inspector import Inspector
from services.vision.train import TrainConfig, train


@pytest.fixture(scope="module")
def batch(ensemble_inspector: Inspector) -> torch.Tensor:
    images = [part.image for part in SyntheticLine(seed=7).parts(12)]  # good and defective parts
    return ensemble_inspector.preprocess(images)


def member_z(model_dir: Path, name: str, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    model, card = load_artifact(model_dir / MEMBERS_DIR / name)
    with torch.inference_mode():
        scores, maps, _ = model(images)
    return calibrated_z(card.image_calibration, scores), calibrated_z(card.pixel_calibration, maps)


def test_the_fused_map_is_the_mean_of_the_members_calibrated_logs_behind_the_pre_screen(
    ensemble_model_dir: Path, ensemble_inspector: Inspector, batch: torch.Tensor
) -> None:
    model = ensemble_inspector.model
    assert isinstance(model, EnsembleModel)
    params = model.params
    assert params.members == ("patchcore", "destseg") and params.fusion == "geometric"
    first_image, first_map = member_z(ensemble_model_dir, "patchcore", batch)
    _, second_map = member_z(ensemble_model_dir, "destseg", batch)
    with torch.inference_mode():
        scores, maps, _ = model(batch)
    passed = first_image >= params.prescreen
    assert 0 < int(passed.sum()) < len(batch), "the test batch should straddle the pre-screen"
    assert model.last_passed == int(passed.sum())
    expected = torch.where(passed.view(-1, 1, 1), (first_map + second_map) / 2, first_map)
    torch.testing.assert_close(maps.double().log(), expected, atol=1e-4, rtol=1e-4)
    # the image score is the first member's alone (the default image weights)
    torch.testing.assert_close(scores.double().log(), first_image, atol=1e-4, rtol=1e-4)


def test_a_frame_is_scored_alike_alone_and_in_any_batch(
    ensemble_inspector: Inspector, batch: torch.Tensor
) -> None:
    model = ensemble_inspector.model
    with torch.inference_mode():
        together = model(batch)
        alone = [model(batch[i : i + 1]) for i in range(len(batch))]
    torch.testing.assert_close(together[0], torch.cat([a[0] for a in alone]), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(together[1], torch.cat([a[1] for a in alone]), atol=1e-4, rtol=1e-4)


class Refusing(torch.nn.Module):
    """Stands in for a member that must not be asked."""

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        raise AssertionError(f"the second member was asked about {len(images)} frames")


def test_frames_below_the_pre_screen_never_reach_the_other_members(
    ensemble_inspector: Inspector, batch: torch.Tensor
) -> None:
    model = ensemble_inspector.model
    assert isinstance(model, EnsembleModel)
    closed = EnsembleModel(
        [model.members[0], Refusing()],
        model.calibrations,
        model.image_size,
        replace(model.params, prescreen=1000.0),
    )
    with torch.inference_mode():
        scores, maps, _ = closed(batch)
    assert closed.last_passed == 0
    with torch.inference_mode():
        first = model.member_output(0, batch)
    torch.testing.assert_close(scores.double().log(), first.image_z, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(maps.double().log(), first.map_z, atol=1e-4, rtol=1e-4)


def test_the_pre_screen_level_passes_the_chosen_share_of_good_frames(ensemble_model_dir: Path) -> None:
    z = torch.linspace(-3, 3, 200, dtype=torch.float64)
    for share in (0.05, 0.1, 0.5):
        level = prescreen_level(z, share)
        assert float((z >= level).double().mean()) == pytest.approx(share, abs=0.01)
    assert bool((z >= prescreen_level(z, 1.0)).all()) and not bool((z >= prescreen_level(z, 0.0)).any())
    card = read_card(ensemble_model_dir)
    summary = card.training.ensemble
    assert summary is not None and card.params["pass_share"] == 0.5
    assert summary["held_out_passed"] == math.ceil(summary["held_out"] / 2)  # 3 of the 6 held out


def test_the_card_records_the_members_and_a_calibration_of_its_own(ensemble_model_dir: Path) -> None:
    card = read_card(ensemble_model_dir)
    assert card.kind == "ensemble" and card.image_size == 128
    members = card.training.ensemble["members"]  # type: ignore[index]
    assert [m["kind"] for m in members] == ["patchcore", "destseg"]
    for member in members:
        assert read_card(ensemble_model_dir / MEMBERS_DIR / member["name"]).version == member["version"]
    assert card.tensors == {"map_weights": [2], "image_weights": [2]}
    # the PatchCore member was trained here with its held-out images kept unseen
    patchcore = read_card(ensemble_model_dir / MEMBERS_DIR / "patchcore")
    assert patchcore.training.n_holdout == card.training.n_holdout == 6


def test_a_replaced_member_is_refused_on_load(
    ensemble_model_dir: Path, model_dir: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "ensemble"
    shutil.copytree(ensemble_model_dir, copy)
    shutil.rmtree(copy / MEMBERS_DIR / "destseg")
    with pytest.raises(ArtifactError, match=r"ensemble member destseg: .* does not exist"):
        load_artifact(copy)
    shutil.copytree(ensemble_model_dir / MEMBERS_DIR / "patchcore", copy / MEMBERS_DIR / "destseg")
    with pytest.raises(ArtifactError, match="replaced after the ensemble was calibrated"):
        load_artifact(copy)


def config(data: Path, out: Path, members: tuple[str, ...], **changes: object) -> TrainConfig:
    base = TrainConfig(
        data_root=data,
        category="synthetic",
        out_dir=out,
        detector="ensemble",
        activation="relu",
        image_size=128,
        members=members,
        progress=False,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def test_members_that_do_not_share_the_split_or_size_are_refused(
    synthetic_data: Path, destseg_model_dir: Path, model_dir: Path, mobilenet_weights: Path, tmp_path: Path
) -> None:
    ensemble = tmp_path / "ensemble"
    # the session's PatchCore inspects 256 px, its DeSTSeg 128
    with pytest.raises(ValueError, match="inspects 256 px"):
        train(config(synthetic_data, ensemble, (str(model_dir), str(destseg_model_dir))))
    with pytest.raises(ValueError, match="held out other images"):
        train(config(synthetic_data, ensemble, (str(destseg_model_dir), str(destseg_model_dir)), seed=3))
    with pytest.raises(ValueError, match="neither a model folder"):
        train(config(synthetic_data, ensemble, ("patchcor", str(destseg_model_dir))))
    with pytest.raises(ValueError, match="at least two members"):
        train(config(synthetic_data, ensemble, (str(destseg_model_dir),)))
    # a PatchCore whose per-position statistics took in its held-out images after calibrating
    folded = tmp_path / "folded"
    train(
        TrainConfig(
            data_root=synthetic_data,
            category="synthetic",
            out_dir=folded,
            weights=mobilenet_weights,
            activation="relu",
            image_size=128,
            position_weight=0.3,
            progress=False,
            folds=0,
        )
    )
    with pytest.raises(ValueError, match="include its held-out images"):
        train(config(synthetic_data, ensemble, (str(folded), str(destseg_model_dir))))
    # a cross-fitted PatchCore (the default) saw every image
    crossfitted = tmp_path / "crossfitted"
    train(
        TrainConfig(
            data_root=synthetic_data,
            category="synthetic",
            out_dir=crossfitted,
            weights=mobilenet_weights,
            activation="relu",
            image_size=128,
            position_weight=0.3,
            progress=False,
        )
    )
    with pytest.raises(ValueError, match="cross-fitted on every good image"):
        train(config(synthetic_data, ensemble, (str(crossfitted), str(destseg_model_dir))))
    assert not (ensemble / "card.json").exists()


def test_params_are_checked() -> None:
    with pytest.raises(ValueError, match="3 map weights for 2 members"):
        ensemble_params(["a", "b"], map_weights=[1, 1, 1])
    with pytest.raises(ValueError, match="the first member"):
        ensemble_params(["a", "b"], image_weights=[0, 1])
    with pytest.raises(ValueError, match="pass share"):
        ensemble_params(["a", "b"], pass_share=1.5)
    assert ensemble_params(["a", "b", "c"]).image_weights == (1.0, 0.0, 0.0)


def test_the_cli_says_which_settings_belong_to_the_ensemble(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["train", "--data", str(tmp_path), "--category", "x", "--out", str(tmp_path / "m")]
    assert main([*base, "--detector", "ensemble"]) == 2
    assert "needs --members" in capsys.readouterr().err
    assert main([*base, "--pass-share", "0.1"]) == 2
    assert "are ensemble settings" in capsys.readouterr().err


def test_the_ensemble_scores_like_its_inspector_after_a_json_round_trip(
    ensemble_model_dir: Path, ensemble_inspector: Inspector
) -> None:
    """The card's settings survive JSON (tuples come back as lists) and reload to the same model."""
    card = json.loads((ensemble_model_dir / "card.json").read_text())
    assert card["params"]["members"] == ["patchcore", "destseg"]
    again = Inspector.load(ensemble_model_dir)
    images = [part.image for part in SyntheticLine(seed=2).parts(3)]
    ours, theirs = ensemble_inspector.predict(images), again.predict(images)
    np.testing.assert_allclose([p.score for p in ours], [p.score for p in theirs], atol=1e-6)


def test_each_prediction_carries_the_members_scores_behind_the_pre_screen(
    ensemble_inspector: Inspector,
) -> None:
    """Every frame has the pre-screen's calibrated score; the frames it passes on have every
    member's, and the fused score is their weighted mean (geometric fusion, equal weights)."""
    from services.inference.wire import decode_prediction, encode_prediction

    model = ensemble_inspector.model
    assert isinstance(model, EnsembleModel)
    images = [part.image for part in SyntheticLine(seed=4).parts(8)]
    predictions = ensemble_inspector.predict(images, batch_size=8)
    assert all(
        set(p.member_scores) <= {"patchcore", "destseg"} and "patchcore" in p.member_scores
        for p in predictions
    )
    both = [p for p in predictions if len(p.member_scores) == 2]
    assert len(both) == model.last_passed
    weights = model.params.image_weights
    for p in both:
        fused = (weights[0] * p.member_scores["patchcore"] + weights[1] * p.member_scores["destseg"]) / sum(
            weights
        )
        assert np.log(p.score_raw) == pytest.approx(fused, abs=1e-3)
    again, _ = decode_prediction(encode_prediction(predictions[0]))
    assert again.member_scores == predictions[0].member_scores
