"""The command line end to end on a small subset of the real MVTec bottle images.

train → evaluate --json → predict, for PatchCore and SPADE, with a corrupt file planted in the
training and test folders to check that a dataset run reports it instead of dying.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from PIL import Image

import services.vision.train as train_module
from services.cli import main
from services.vision.artifact import load_artifact
from services.vision.dataset import iter_batches, list_train_images
from services.vision.evaluate import score_test_set
from services.vision.images import load_image
from services.vision.inspector import Inspector
from services.vision.metrics import evaluate_detection
from services.vision.patchcore import PatchCoreModel, position_features

pytestmark = [pytest.mark.integration, pytest.mark.slow]
EVALUATE_KEYS = {
    "image_auroc",
    "pixel_auroc",
    "pro",
    "pixel_ap",
    "image_f1",
    "iap",
    "iap90",
    "fpr",
    "fnr",
    "images_per_s",
    "n_images",
}


@pytest.fixture(scope="module")
def bottle_subset(bottle_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 good training images, 10 good and 10 defective test images (links), plus two bad files."""
    source = bottle_root / "bottle"
    root = tmp_path_factory.mktemp("bottle_subset")
    target = root / "bottle"
    picks = {
        "train/good": 40,
        "test/good": 10,
        "test/broken_large": 4,
        "test/broken_small": 3,
        "test/contamination": 3,
    }
    for folder, count in picks.items():
        (target / folder).mkdir(parents=True)
        for path in sorted((source / folder).iterdir())[:count]:
            os.symlink(path, target / folder / path.name)
            if folder != "test/good":
                kind = folder.split("/")[1]
                mask = source / "ground_truth" / kind / f"{path.stem}_mask.png"
                (target / "ground_truth" / kind).mkdir(parents=True, exist_ok=True)
                os.symlink(mask, target / "ground_truth" / kind / mask.name)
    (target / "train" / "good" / "zz_truncated.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    Image.new("RGB", (1, 1)).save(target / "test" / "good" / "zz_tiny.png")
    return root


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().out


def train_on(
    capsys: pytest.CaptureFixture[str], data: Path, weights: Path, model: Path, *extra: str
) -> tuple[int, str]:
    """``linewatch train`` on the bottle subset with the shared MobileNetV2 and a 5% coreset."""
    data_args = ["--data", str(data), "--category", "bottle", "--out", str(model)]
    backbone_args = ["--weights", str(weights), "--activation", "relu", "--coreset", "0.05"]
    return run(capsys, "train", *data_args, *backbone_args, *extra)


def evaluate_on(capsys: pytest.CaptureFixture[str], data: Path, model: Path) -> tuple[int, str]:
    """``linewatch evaluate --json`` of ``model`` on the bottle subset."""
    return run(
        capsys, "evaluate", "--model", str(model), "--data", str(data), "--category", "bottle", "--json"
    )


@pytest.mark.parametrize("detector", ["patchcore", "spade"])
def test_train_evaluate_predict_round_trip(
    detector: str,
    bottle_subset: Path,
    mobilenet_weights: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    model = tmp_path / "model"
    code, out = train_on(capsys, bottle_subset, mobilenet_weights, model, "--detector", detector)
    assert code == 0
    assert "skipped" in out and "zz_truncated.png" in out
    card = json.loads((model / "card.json").read_text())
    assert card["training"]["n_images"] == 40
    if detector == "patchcore":  # cross-fitted: every image calibrates, the choice is made on all
        assert (card["training"]["n_holdout"], card["training"]["folds"]) == (0, 5)
        assert card["image_calibration"]["n_scores"] == 40
        assert "calibrated on all of them scored out of sample in 5 folds" in out
        chosen = card["training"]["position_choice"]
        assert chosen["n_good"] == chosen["n_painted"] == 40
        assert card["operating"]["goods"] == "cross-fitted" and len(card["operating"]["defect_scores"]) == 40
    else:  # SPADE keeps the held-out split
        assert (card["training"]["n_holdout"], card["training"]["folds"]) == (6, None)
        assert card["training"]["position_choice"] is None
        assert card["operating"]["goods"] == "held-out" and len(card["operating"]["good_scores"]) == 6
    assert card["review"]["method"] == "tolerance" and card["review"]["review_fpr"] == 0.1
    assert card["review"]["threshold"] <= card["image_calibration"]["threshold"]
    assert "REVIEW from" in out and "estimated at this operating point" in out

    code, out = evaluate_on(capsys, bottle_subset, model)
    assert code == 0
    result = json.loads(out)  # exactly one JSON object on stdout
    assert result.keys() >= EVALUATE_KEYS
    assert result["n_images"] == 20
    assert result["image_auroc"] >= 0.95
    assert result["pixel_auroc"] >= 0.9
    assert [s["path"].endswith("zz_tiny.png") for s in result["skipped"]] == [True]
    assert result["miss_rate"] <= result["fnr"]  # the REVIEW band only takes defects away from OK
    assert 0 <= result["estimated_miss_rate"] <= 1 and result["fpr"] <= 0.1
    # the scores and maps behind those numbers, as benchmarks/accuracy_margin.py reads them
    scored = score_test_set(Inspector.load(model), bottle_subset, "bottle", progress=False)
    assert len(scored.names) == len(scored.labels) == len(scored.scores) == scored.maps.shape[0] == 20
    assert scored.names[0].startswith("broken_large/") and scored.names[-1].startswith("good/")
    assert scored.labels.tolist() == [1] * 10 + [0] * 10
    assert scored.maps.shape == scored.masks.shape == (20, 256, 256)
    assert scored.masks[:10].any(axis=(1, 2)).all() and not scored.masks[10:].any()
    assert [s.path.endswith("zz_tiny.png") for s in scored.skipped] == [True]
    recomputed = evaluate_detection(scored.scores, scored.labels, scored.maps, scored.masks, threshold=0.5)
    assert recomputed["pixel_auroc"] == pytest.approx(result["pixel_auroc"], abs=1e-4)

    images = sorted((bottle_subset / "bottle" / "test" / "broken_large").iterdir())[:2]
    out_dir = tmp_path / "predictions"
    code, out = run(capsys, "predict", "--model", str(model), *map(str, images), "--out", str(out_dir))
    assert code == 0
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line["verdict"] for line in lines] == ["NG", "NG"]
    assert all(line["defects"] for line in lines)
    overlay = Image.open(out_dir / f"{images[0].stem}_overlay.png")
    assert overlay.size == (512, 512)
    assert json.loads((out_dir / f"{images[0].stem}.json").read_text())["score"] > 0.5


def test_commands_fail_clearly_on_a_missing_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["evaluate", "--model", str(tmp_path / "absent"), "--data", str(tmp_path), "--category", "x"])
    assert code == 2
    assert "does not exist" in capsys.readouterr().err


def test_the_held_out_images_join_the_position_statistics_once_calibrated(
    bottle_subset: Path, mobilenet_weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The thresholds come from the held-out images scored by Gaussians fitted without them; the
    saved Gaussians are then estimated on every usable training image, as PaDiM's are."""
    model = tmp_path / "model"
    code, out = train_on(
        capsys, bottle_subset, mobilenet_weights, model, "--position-weight", "0.5", "--folds", "0"
    )
    assert code == 0
    assert "position statistics on 40 good images" in out
    card = json.loads((model / "card.json").read_text())
    training = card["training"]
    assert (training["n_fit"], training["n_holdout"]) == (34, 6)  # of 40, the truncated file skipped
    assert training["position_images"] == 40
    assert card["image_calibration"]["n_scores"] == 6
    detector, _ = load_artifact(model)
    assert isinstance(detector, PatchCoreModel) and detector.uses_positions
    paths = list_train_images(bottle_subset, "bottle")
    features = []
    with torch.inference_mode():
        for batch in iter_batches(paths, 256, 8, []):
            features.append(position_features(detector.extractor(batch.images)))
    assert sum(len(f) for f in features) == 40
    assert torch.allclose(detector.position_mean, torch.cat(features).mean(0), atol=1e-3)


def test_train_with_the_position_weight_chosen_on_painted_defects(
    bottle_subset: Path,
    mobilenet_weights: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The default ``--position-weight auto`` with enough held-out images: the choice and every
    candidate's scores are on the card, the model uses what was chosen, and it still tells the real
    defects from the good parts. Past ``MAX_AUTO_GOODS`` held-out images it chooses on that many."""
    monkeypatch.setattr(train_module, "MAX_AUTO_GOODS", 12)
    model = tmp_path / "model"
    half = ("--holdout", "0.5", "--folds", "0")  # 20 held out: the least that "auto" chooses on
    code, out = train_on(capsys, bottle_subset, mobilenet_weights, model, *half)
    assert code == 0
    card = json.loads((model / "card.json").read_text())
    assert card["training"]["n_holdout"] >= 19  # one of the 20 may be the truncated file
    chosen = card["training"]["position_choice"]
    # 12 of them (11 if the truncated file is among the picks) and 2 painted copies of each
    assert chosen["n_good"] in (11, 12)
    assert chosen["n_painted"] == 2 * chosen["n_good"]
    assert len(chosen["table"]) == 44
    (row,) = [
        r
        for r in chosen["table"]
        if (r["weight"], r["top_share"]) == (chosen["position_weight"], chosen["image_top_share"])
    ]
    assert row["mean"] == max(r["mean"] for r in chosen["table"])  # the best-rated candidate was kept
    assert card["params"]["position_weight"] == chosen["position_weight"]
    assert card["params"]["image_top_share"] == chosen["image_top_share"]
    assert f"position weight {chosen['position_weight']}" in out
    has_positions = "position_mean" in card["tensors"]
    assert has_positions == (chosen["position_weight"] > 0)

    code, out = evaluate_on(capsys, bottle_subset, model)
    assert code == 0
    assert json.loads(out)["image_auroc"] >= 0.95


def test_calibrate_moves_the_thresholds_without_retraining(
    bottle_subset: Path, mobilenet_weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``linewatch calibrate`` re-sets the NG threshold and the REVIEW band from the card's scores,
    leaves the weights alone, and the inspector's verdicts follow the new band."""
    model = tmp_path / "model"
    code, _ = train_on(capsys, bottle_subset, mobilenet_weights, model)
    assert code == 0
    before = json.loads((model / "card.json").read_text())
    weights = (model / "weights.safetensors").read_bytes()
    code, out = run(capsys, "calibrate", "--model", str(model), "--max-miss-rate", "0")
    assert code == 0 and "REVIEW from" in out and "misses (defective called OK) 0.0%" in out
    after = json.loads((model / "card.json").read_text())
    assert after["review"]["method"] == "miss-rate"
    assert after["review"]["threshold"] == min(
        min(before["operating"]["defect_scores"]), before["image_calibration"]["threshold"]
    )
    assert (model / "weights.safetensors").read_bytes() == weights
    code, out = run(
        capsys, "calibrate", "--model", str(model), "--target-fpr", "0.05", "--review-fpr", "0", "--dry-run"
    )
    assert code == 0 and "would set" in out and "no REVIEW band" in out
    assert json.loads((model / "card.json").read_text()) == after  # a dry run changes nothing
    assert main(["calibrate", "--model", str(model), "--review-fpr", "0.001"]) == 2
    assert "--review-fpr lies between" in capsys.readouterr().err
    inspector = Inspector.load(model)
    assert inspector.card.review is not None
    ng, edge = inspector.card.image_calibration.threshold, inspector.card.review.threshold
    assert edge < ng
    verdict = lambda raw: inspector.verdict(raw, float(inspector.card.image_calibration.normalise(raw)))  # noqa: E731
    assert [verdict(edge * 0.99), verdict((edge + ng) / 2), verdict(ng)] == ["OK", "REVIEW", "NG"]
    # real defects: their scores replace the painted ones, and the band follows them
    defects = bottle_subset / "bottle" / "test"
    code, out = run(capsys, "calibrate", "--model", str(model), "--defects", str(defects / "broken_large"))
    assert code == 0 and "4 real: broken_large defects" in out
    real = json.loads((model / "card.json").read_text())["operating"]
    scores = [
        float(s.score_raw)
        for s in inspector.predict([load_image(p) for p in sorted((defects / "broken_large").iterdir())])
    ]
    assert real["defects"] == "real: broken_large" and real["defect_scores"] == pytest.approx(
        scores, rel=1e-5
    )
    code, out = run(
        capsys, "calibrate", "--model", str(model), "--defects", str(defects), "--max-miss-rate", "0"
    )
    assert code == 0 and "10 real: test defects" in out  # the goods below test/ are not defects: left out
    assert main(["calibrate", "--model", str(model), "--defects", str(defects / "good" / "x")]) == 2
    assert "is not a folder" in capsys.readouterr().err
