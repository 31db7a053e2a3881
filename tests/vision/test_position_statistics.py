"""Per-position Gaussians blended into PatchCore: exact statistics, scoring, blending, round trip."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from services.vision.artifact import load_artifact, save_artifact
from services.vision.backbone import FeatureExtractor, build_feature_extractor
from services.vision.dataset import LoadedBatch
from services.vision.maps import patch_scores_to_map
from services.vision.patchcore import (
    PatchCoreModel,
    PatchCoreParams,
    PositionStatistics,
    blend_scores,
    fit_patchcore,
    position_distances,
    position_features,
    top_share_mean,
    top_share_means,
)
from services.vision.train import score_held_out, score_spreads
from tests.vision.test_detectors import SIZE, card_fields, good_images, with_defect


def test_streamed_statistics_match_the_direct_estimate() -> None:
    generator = torch.Generator().manual_seed(0)
    features = 3.0 + torch.randn(40, 5, 4, generator=generator)  # (images, positions, channels)
    stats = PositionStatistics()
    for batch in features.split(7):
        stats.add(batch)
    mean, precision = stats.precision(eps=0.01, chunk=2)
    for p in range(5):
        x = features[:, p].double()
        cov = torch.cov(x.T) + 0.01 * torch.eye(4, dtype=torch.float64)
        assert torch.allclose(mean[p].double(), x.mean(0), atol=1e-5)
        expected = torch.linalg.inv(cov)
        assert precision.dtype == torch.float16
        assert torch.allclose(precision[p].double(), expected, atol=1e-3, rtol=1e-3)


def test_statistics_kept_after_an_estimate_take_more_images() -> None:
    """Training estimates the Gaussians on the fitted images, scores the held-out ones with them,
    then adds those and estimates again: the second estimate is that of all the images."""
    generator = torch.Generator().manual_seed(1)
    features = -2.0 + 0.5 * torch.randn(30, 3, 4, generator=generator)
    stats = PositionStatistics()
    stats.add(features[:20])
    first_mean, first_precision = stats.precision(eps=0.01, keep=True)
    assert torch.allclose(first_mean, features[:20].mean(0), atol=1e-5)
    stats.add(features[20:])
    mean, precision = stats.precision(eps=0.01)
    assert stats.count == 30 and torch.allclose(mean, features.mean(0), atol=1e-5)
    for p in range(3):
        cov = torch.cov(features[:, p].double().T) + 0.01 * torch.eye(4, dtype=torch.float64)
        assert torch.allclose(precision[p].double(), torch.linalg.inv(cov), atol=1e-3, rtol=1e-3)
    assert not torch.allclose(precision, first_precision, atol=1e-2)
    with pytest.raises(ValueError, match="consumed"):  # by the estimate without keep
        stats.precision(eps=0.01)


def test_parked_statistics_come_back_unchanged() -> None:
    """Training parks the sums in a temporary file through the blend choice."""
    features = torch.randn(6, 5, 3, generator=torch.Generator().manual_seed(2))
    stats = PositionStatistics()
    stats.add(features)
    before = stats.outer.clone()
    with stats.parked():
        assert stats.outer.numel() == 0  # out of memory while parked
    assert torch.equal(stats.outer, before)
    mean, _ = stats.precision(eps=0.01)
    with stats.parked():  # consumed: nothing to park
        pass
    assert torch.allclose(mean, features.mean(0), atol=1e-5)


def test_too_few_images_for_statistics_is_refused() -> None:
    stats = PositionStatistics()
    stats.add(torch.zeros(1, 3, 2))
    with pytest.raises(ValueError, match="at least 2"):
        stats.precision(eps=0.01)


def test_position_distance_is_the_mahalanobis_distance() -> None:
    mean = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    precision = torch.stack([torch.diag(torch.tensor([4.0, 1.0])), torch.eye(2)])
    features = torch.tensor([[[2.0, 2.0], [3.0, 4.0]]])  # one image, two positions
    expected = torch.tensor([[2.0, 5.0]])
    assert torch.allclose(position_distances(features, mean, precision, chunk=1), expected)
    assert torch.allclose(position_distances(features, mean, precision.half()), expected)


def test_position_features_repeat_deeper_layers_onto_the_finest_grid() -> None:
    fine = torch.zeros(1, 2, 4, 4)
    coarse = torch.arange(4.0).view(1, 1, 2, 2)
    out = position_features([fine, coarse])
    assert out.shape == (1, 16, 3)
    assert out[0, :, 2].view(4, 4)[0].tolist() == [0.0, 0.0, 1.0, 1.0]


def test_linear_blend_is_a_shifted_weighted_sum_of_standardised_scores() -> None:
    patch, position = torch.tensor([[1.0, 3.0]]), torch.tensor([[10.0, 30.0]])
    blended = blend_scores(patch, position, torch.tensor([2.0, 20.0]), 0.25, "linear")
    assert torch.allclose(blended, torch.tensor([[0.75 * 0.5 + 0.25 * 0.5, 0.75 * 1.5 + 0.25 * 1.5]]))


def test_geometric_blend_is_a_weighted_geometric_mean_of_standardised_scores() -> None:
    patch, position = torch.tensor([[1.0, 4.0, 0.0]]), torch.tensor([[10.0, 10.0, 20.0]])
    spreads = torch.tensor([2.0, 20.0])
    blended = blend_scores(patch, position, spreads, 0.5)  # the default
    assert torch.allclose(blended, torch.tensor([[0.5, 1.0, 0.0]]))  # sqrt(2 * 0.5) in the middle
    # weight 0 is the standardised patch distance, weight 1 the position one, as with the linear blend
    assert torch.equal(blend_scores(patch, position, spreads, 0.0), patch / 2.0)
    assert torch.equal(blend_scores(patch, position, spreads, 1.0), position / 20.0)
    # a region where both distances rise outranks one where only one does, unlike the linear blend
    both, one = torch.tensor([[3.0, 3.0]]), torch.tensor([[1.0, 5.0]])
    unit = torch.ones(2)
    assert blend_scores(both[:, :1], both[:, 1:], unit, 0.5) > blend_scores(one[:, :1], one[:, 1:], unit, 0.5)
    assert blend_scores(both[:, :1], both[:, 1:], unit, 0.5, "linear") == blend_scores(
        one[:, :1], one[:, 1:], unit, 0.5, "linear"
    )
    with pytest.raises(ValueError, match="unknown blend"):
        blend_scores(patch, position, spreads, 0.5, "max")  # type: ignore[arg-type]


def test_top_share_mean_averages_the_highest_pixels() -> None:
    maps = torch.arange(100.0).view(1, 10, 10)
    assert top_share_mean(maps, 0.03).item() == pytest.approx(98.0)
    assert top_share_mean(maps, 0.0).item() == 99.0  # at least the maximum


def test_top_share_means_give_each_share_its_own_mean() -> None:
    maps = torch.randn(5, 64, 64, generator=torch.Generator().manual_seed(0))
    shares = (0.005, 0.01, 0.02, 0.05)
    together = top_share_means(maps, shares)
    assert together.shape == (5, 4)
    for column, share in enumerate(shares):
        assert torch.allclose(together[:, column], maps.flatten(1).topk(round(share * 4096)).values.mean(1))
    assert (together[:, :-1] >= together[:, 1:]).all()  # a smaller share averages higher pixels


@pytest.fixture(scope="module")
def extractor(mobilenet_weights: Path) -> FeatureExtractor:
    return build_feature_extractor("mobilenet_v2", None, mobilenet_weights, "relu")


@pytest.fixture(scope="module")
def blended(extractor: FeatureExtractor) -> PatchCoreModel:
    params = PatchCoreParams(coreset_ratio=0.1, position_weight=0.5)
    model = fit_patchcore(extractor, [good_images(8, seed) for seed in range(3)], 24, SIZE, params, False)
    held = score_held_out(model, [LoadedBatch(good_images(4, 50), [Path(f"{i}.png") for i in range(4)], [])])
    assert held.patch.shape == held.position.shape == (4, (SIZE // 8) ** 2)
    model.score_norm.copy_(score_spreads(held))
    return model


def test_blended_model_scores_defects_higher_and_finds_where(blended: PatchCoreModel) -> None:
    grid = SIZE // 8
    assert blended.position_mean.shape == (grid * grid, 32 + 96)
    assert blended.position_precision.shape == (grid * grid, 128, 128)
    assert bool((blended.score_norm > 0).all())
    good = good_images(4, 100)
    with torch.inference_mode():
        good_scores, good_maps, _ = blended(good)
        bad_scores, bad_maps, _ = blended(with_defect(good))
    assert bad_scores.min() > good_scores.max()
    assert torch.allclose(good_scores, top_share_mean(good_maps, blended.params.image_top_share))
    assert bool((good_maps > 0).all())  # positive, as the log-score calibration needs
    for anomaly_map in bad_maps:
        y, x = np.unravel_index(int(anomaly_map.argmax()), anomaly_map.shape)
        assert 70 <= y <= 106 and 10 <= x <= 46


def test_scores_blended_from_the_two_distances_equal_the_models(blended: PatchCoreModel) -> None:
    """Training calibrates from the held-out images' distances instead of scoring them again."""
    images = with_defect(good_images(3, 200))
    with torch.inference_mode():
        scores, maps, _ = blended(images)
        patch, position, grid = blended.component_scores(images)
        again_scores, again_maps, _ = blended.blended_scores(patch, position, grid)
    assert torch.allclose(scores, again_scores) and torch.allclose(maps, again_maps)


def test_position_statistics_of_another_shape_are_refused(blended: PatchCoreModel) -> None:
    mean, precision = blended.position_mean, blended.position_precision
    with pytest.raises(ValueError, match="cannot replace"):
        blended.set_position_statistics(mean[:-1], precision[:-1])
    blended.set_position_statistics(mean.clone(), precision.clone())  # the same shape is taken
    assert blended.position_precision.dtype == torch.float16


def test_zero_position_weight_keeps_plain_patchcore(extractor: FeatureExtractor) -> None:
    model = fit_patchcore(extractor, [good_images(8, 1)], 8, SIZE, PatchCoreParams(coreset_ratio=0.1), False)
    assert model.position_mean.numel() == 0 and not model.uses_positions


def test_blended_artifact_round_trips(blended: PatchCoreModel, tmp_path: Path) -> None:
    card = save_artifact(blended, card_fields(blended), tmp_path / "model")
    assert "position_precision" in card.tensors and card.params["position_weight"] == 0.5
    loaded, _ = load_artifact(tmp_path / "model")
    images = with_defect(good_images(2, 300))
    with torch.inference_mode():
        for a, b in zip(blended(images), loaded(images), strict=True):
            assert torch.allclose(a, b, atol=1e-5)


def test_a_card_from_before_the_geometric_blend_loads_as_linear(
    blended: PatchCoreModel, tmp_path: Path
) -> None:
    """Cards written before the blend could be chosen have no ``blend``: their thresholds were
    calibrated on the linear blend, so they must keep scoring with it."""
    card = save_artifact(blended, card_fields(blended), tmp_path / "model")
    assert card.params["blend"] == "geometric"
    fields = json.loads((tmp_path / "model" / "card.json").read_text())
    del fields["params"]["blend"]
    (tmp_path / "model" / "card.json").write_text(json.dumps(fields))
    loaded, _ = load_artifact(tmp_path / "model")
    assert isinstance(loaded, PatchCoreModel) and loaded.params.blend == "linear"
    images = with_defect(good_images(2, 310))
    with torch.inference_mode():
        patch, position, grid = blended.component_scores(images)
        linear = blend_scores(patch, position, blended.score_norm, 0.5, "linear").view(-1, *grid)
        _, maps, _ = loaded(images)
    assert torch.allclose(maps, patch_scores_to_map(linear, SIZE, blended.params.sigma), atol=1e-5)
