"""PatchCore and SPADE on tensors: defects score higher and are located; artifacts round-trip."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from services.vision.artifact import ArtifactError, load_artifact, read_card, save_artifact
from services.vision.backbone import FeatureExtractor, build_feature_extractor
from services.vision.calibration import fit_threshold
from services.vision.inspector import Inspector
from services.vision.patchcore import PatchCoreModel, PatchCoreParams, fit_patchcore
from services.vision.spade import SpadeParams, fit_spade

SIZE = 128


def good_images(n: int, seed: int) -> torch.Tensor:
    """A brushed-metal-like texture: horizontal streaks plus fine noise, normalised."""
    generator = torch.Generator().manual_seed(seed)
    rows = torch.randn(n, 1, SIZE, 1, generator=generator).expand(n, 3, SIZE, SIZE)
    return 0.5 * rows + 0.3 * torch.randn(n, 3, SIZE, SIZE, generator=generator)


def with_defect(images: torch.Tensor) -> torch.Tensor:
    damaged = images.clone()
    damaged[:, :, 80:96, 20:36] = 2.5  # a bright 16x16 blob in the lower left
    return damaged


@pytest.fixture(scope="module")
def extractor(mobilenet_weights: Path) -> FeatureExtractor:
    return build_feature_extractor("mobilenet_v2", None, mobilenet_weights, "relu")


@pytest.fixture(scope="module")
def patchcore(extractor: FeatureExtractor) -> PatchCoreModel:
    batches = [good_images(8, seed) for seed in range(3)]
    return fit_patchcore(extractor, batches, 24, SIZE, PatchCoreParams(coreset_ratio=0.1), progress=False)


def test_patchcore_scores_defects_higher_and_finds_where(patchcore: PatchCoreModel) -> None:
    good = good_images(4, 100)
    with torch.inference_mode():
        good_scores, _, _ = patchcore(good)
        bad_scores, bad_maps, embeddings = patchcore(with_defect(good))
    assert bad_scores.min() > good_scores.max()
    assert embeddings.shape == (4, patchcore.memory_bank.shape[1])
    for anomaly_map in bad_maps:
        y, x = np.unravel_index(int(anomaly_map.argmax()), anomaly_map.shape)
        assert 70 <= y <= 106 and 10 <= x <= 46


def test_memory_bank_is_bounded_by_the_candidate_cap(extractor: FeatureExtractor) -> None:
    params = PatchCoreParams(coreset_ratio=0.5, max_candidates=600)
    model = fit_patchcore(extractor, [good_images(6, 1), good_images(6, 2)], 12, SIZE, params, progress=False)
    assert model.memory_bank.shape[0] == 300  # 12 images x 50 patches each, then half by coreset


def test_spade_scores_defects_higher_and_finds_where(extractor: FeatureExtractor) -> None:
    model = fit_spade(extractor, [good_images(8, 5), good_images(8, 6)], 16, SIZE, SpadeParams(k_images=5))
    good = good_images(3, 200)
    with torch.inference_mode():
        good_scores, _, _ = model(good)
        bad_scores, bad_maps, _ = model(with_defect(good))
    assert bad_scores.min() > good_scores.max()
    y, x = np.unravel_index(int(bad_maps[0].argmax()), bad_maps[0].shape)
    assert 70 <= y <= 106 and 10 <= x <= 46


def card_fields(model: PatchCoreModel) -> dict:
    calibration = fit_threshold(np.array([1.0, 1.1, 1.2, 1.3, 1.25]))
    return {
        "name": "texture-patchcore",
        "version": "test",
        "kind": "patchcore",
        "backbone": "mobilenet_v2",
        "layers": model.extractor.layers,
        "activation": "relu",
        "image_size": SIZE,
        "params": {**model.params.__dict__},
        "image_calibration": calibration,
        "pixel_calibration": calibration,
        "training": {
            "data_root": "-",
            "category": "texture",
            "n_images": 24,
            "n_fit": 24,
            "n_holdout": 0,
            "skipped": [],
            "fingerprint": "0" * 64,
            "fit_seconds": 1.0,
            "created_at": "2026-01-01T00:00:00+00:00",
        },
    }


def test_artifact_round_trip_gives_identical_scores(patchcore: PatchCoreModel, tmp_path: Path) -> None:
    save_artifact(patchcore, card_fields(patchcore), tmp_path / "model")
    loaded, card = load_artifact(tmp_path / "model")
    images = with_defect(good_images(2, 300))
    with torch.inference_mode():
        expected, loaded_out = patchcore(images), loaded(images)
    for a, b in zip(expected, loaded_out, strict=True):
        assert torch.allclose(a, b, atol=1e-5)
    assert card.versions["torch"] == torch.__version__
    predictions = Inspector(loaded, card).predict([np.zeros((64, 80, 3), np.uint8)])
    assert predictions[0].anomaly_map.shape == (SIZE, SIZE)
    assert 0.0 < predictions[0].score < 1.0


def test_a_card_from_before_the_screened_search_still_loads(
    patchcore: PatchCoreModel, tmp_path: Path
) -> None:
    """Cards once carried an opt-in approximate search; every search is exact now."""
    model_dir = tmp_path / "model"
    save_artifact(patchcore, card_fields(patchcore), model_dir)
    card = json.loads((model_dir / "card.json").read_text())
    assert "approximate_search" not in card["params"]
    card["params"]["approximate_search"] = True
    (model_dir / "card.json").write_text(json.dumps(card))
    loaded, _ = load_artifact(model_dir)
    images = with_defect(good_images(2, 310))
    with torch.inference_mode():
        for a, b in zip(patchcore(images), loaded(images), strict=True):
            assert torch.allclose(a, b, atol=1e-5)


def test_damaged_or_mismatched_artifacts_fail_clearly(patchcore: PatchCoreModel, tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    save_artifact(patchcore, card_fields(patchcore), model_dir)
    weights = model_dir / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="damaged or was replaced"):
        load_artifact(model_dir)

    card = json.loads((model_dir / "card.json").read_text())
    card["format_version"] = 99
    (model_dir / "card.json").write_text(json.dumps(card))
    with pytest.raises(ArtifactError, match="format version 99"):
        read_card(model_dir)
    (model_dir / "card.json").write_text("{ not json")
    with pytest.raises(ArtifactError, match=r"card\.json is damaged"):
        read_card(model_dir)
    with pytest.raises(ArtifactError, match=r"no card\.json"):
        read_card(tmp_path)
    with pytest.raises(ArtifactError, match="does not exist"):
        read_card(tmp_path / "absent")


def test_card_listing_other_tensors_is_refused(patchcore: PatchCoreModel, tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    save_artifact(patchcore, card_fields(patchcore), model_dir)
    card = json.loads((model_dir / "card.json").read_text())
    card["tensors"]["memory_bank"] = [1, 1]
    (model_dir / "card.json").write_text(json.dumps(card))
    with pytest.raises(ArtifactError, match="does not hold the tensors its card lists"):
        load_artifact(model_dir)


def test_weights_are_written_in_the_safetensors_format(tmp_path: Path) -> None:
    """The streaming writer's file is read back by the safetensors library itself, every dtype the
    detectors store (and a few more) bit for bit, with the metadata."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from services.vision.artifact import write_safetensors

    tensors = {
        "bank": torch.randn(5, 3),
        "precision": torch.randn(2, 4, 4).half(),
        "index": torch.arange(6).view(2, 3),
        "scaled": torch.randn(4).bfloat16(),
        "flags": torch.tensor([True, False, True]),
        "empty": torch.empty(0, 3),
        "scalar": torch.tensor(3.5),
    }
    path = tmp_path / "w.safetensors"
    write_safetensors(tensors, path, {"format": "linewatch"})
    back = load_file(str(path))
    assert set(back) == set(tensors)
    for name, tensor in tensors.items():
        assert back[name].dtype == tensor.dtype and torch.equal(back[name], tensor), name
    with safe_open(str(path), "pt") as handle:
        assert handle.metadata() == {"format": "linewatch"}
    with pytest.raises(TypeError, match="complex64"):
        write_safetensors({"z": torch.zeros(2, dtype=torch.complex64)}, path, {})
