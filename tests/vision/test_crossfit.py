"""Cross-fitted calibration: every good image is scored by a model that never saw it.

The principle is tested on a nearest-neighbour detector with known score distributions (a point's
in-sample distance to a bank that holds it is 0, so thresholds on in-sample scores promise nothing),
then the PatchCore implementation on small images written to disk."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from services.vision.backbone import FeatureExtractor, build_feature_extractor
from services.vision.calibration import fit_threshold
from services.vision.crossfit import assign_folds, crossfit_patchcore, out_of_fold_scores
from services.vision.dataset import DatasetError
from services.vision.patchcore import PatchCoreParams, PositionStatistics

SIZE = 64


def test_folds_are_even_deterministic_and_need_images() -> None:
    folds = assign_folds(23, 5, seed=3)
    assert sorted(np.bincount(folds).tolist()) == [4, 4, 5, 5, 5]
    assert folds == assign_folds(23, 5, seed=3) != assign_folds(23, 5, seed=4)
    with pytest.raises(DatasetError, match="too few for 5 folds"):
        assign_folds(9, 5, seed=0)
    with pytest.raises(ValueError, match="2 folds or more"):
        assign_folds(20, 1, seed=0)


def _nearest(bank: np.ndarray, points: np.ndarray) -> np.ndarray:
    return np.sqrt(((points[:, None, :] - bank[None, :, :]) ** 2).sum(axis=2)).min(axis=1)


@pytest.mark.parametrize("target", [0.01, 0.05])
def test_cross_fitted_thresholds_keep_the_false_alarm_rate_on_new_goods(target: float) -> None:
    """A 1-nearest-neighbour detector on 3-D Gaussian 'good parts': the threshold set on cross-fitted
    scores of 400 goods keeps the false-alarm rate of the model fitted on all 400, measured on 20,000
    new goods, at the target in most draws and never above the cross-conformal bound (2x); the
    threshold on in-sample scores (all 0) flags every new good part."""
    rates = []
    for trial in range(12):
        rng = np.random.default_rng(trial)
        goods = rng.normal(size=(400, 3))
        folds = np.asarray(assign_folds(len(goods), 5, seed=trial))
        oof = np.empty(len(goods))
        for fold in range(5):
            oof[folds == fold] = _nearest(goods[folds != fold], goods[folds == fold])
        threshold = fit_threshold(oof, target, 0.9).threshold
        fresh = _nearest(goods, rng.normal(size=(20_000, 3)))
        rates.append(float((fresh >= threshold).mean()))
        in_sample = _nearest(goods, goods)
        assert in_sample.max() == 0.0 and (fresh >= in_sample.max()).mean() == 1.0
    assert np.mean(np.asarray(rates) <= target) >= 0.75, rates
    assert max(rates) <= 2 * target, rates


def test_position_statistics_of_merged_folds_equal_those_of_all_images() -> None:
    features = torch.randn(12, 6, 4)
    shift = features[:3].mean(dim=0)
    parts = [PositionStatistics(shift=shift) for _ in range(3)]
    for i, part in enumerate(parts):
        part.add(features[4 * i : 4 * i + 4])
    whole = PositionStatistics()
    whole.add(features)
    mean, precision = PositionStatistics.merged(parts).precision(0.01)
    expected_mean, expected_precision = whole.precision(0.01)
    torch.testing.assert_close(mean, expected_mean, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(precision.float(), expected_precision.float(), atol=2e-2, rtol=2e-3)
    other = PositionStatistics()
    other.add(features[:4])
    with pytest.raises(ValueError, match="different shifts"):
        PositionStatistics.merged([parts[0], other])


@pytest.fixture(scope="module")
def extractor(mobilenet_weights: Path) -> FeatureExtractor:
    return build_feature_extractor("mobilenet_v2", ["features.3", "features.6"], mobilenet_weights, "relu")


def _write_goods(folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        rows = rng.normal(128, 30, size=(SIZE, 1, 1)).repeat(SIZE, axis=1).repeat(3, axis=2)
        image = np.clip(rows + rng.normal(0, 12, size=(SIZE, SIZE, 3)), 0, 255).astype(np.uint8)
        path = folder / f"{i:03d}.png"
        Image.fromarray(image).save(path)
        paths.append(path)
    return paths


@pytest.mark.parametrize("position_weight", [0.0, 0.5])
def test_patchcore_cross_fit_scores_every_image_out_of_sample(
    extractor: FeatureExtractor, tmp_path: Path, position_weight: float
) -> None:
    paths = _write_goods(tmp_path / "good", 20)
    (tmp_path / "good" / "broken.png").write_bytes(b"not an image")
    skipped: list = []
    params = PatchCoreParams(coreset_ratio=0.1, position_weight=position_weight)
    model, oof, statistics = crossfit_patchcore(
        extractor, [*paths, tmp_path / "good" / "broken.png"], SIZE, params, 4, None, 8, skipped, False
    )
    assert [s.path for s in skipped] == [str(tmp_path / "good" / "broken.png")]
    assert sorted(map(str, oof.paths)) == sorted(map(str, paths))  # every readable image, once
    assert len(oof.painted_patch) == len(oof.patch) == 20 and oof.painted_masks.any(axis=(1, 2)).all()
    assert (statistics is not None) == (position_weight > 0)
    if statistics is not None:
        assert statistics.count == 20
        mean, precision = statistics.precision(params.position_eps)
        model.position_mean, model.position_precision = mean, precision.half()
    model.score_norm.copy_(oof.spreads())
    goods, maxima, painted = out_of_fold_scores(model.eval(), oof)
    assert goods.shape == maxima.shape == painted.shape == (20,)
    assert np.median(painted) > np.median(goods)  # the painted copies stand out
    # out of sample, the goods score above what the model fitted on them gives them in sample
    with torch.inference_mode():
        from services.vision.dataset import preprocess

        own = torch.stack([preprocess(np.asarray(Image.open(p).convert("RGB")), SIZE) for p in oof.paths])
        in_sample = model(own)[0].numpy()
    assert np.median(goods) > np.median(in_sample)
