"""``linewatch synth``: an MVTec-layout set of synthetic defects that ``linewatch evaluate`` reads
back, deterministic by seed, refusing to write over a set or into the source data."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from services.cli import main
from services.ingest.synthetic import write_dataset
from services.vision.evaluate import evaluate
from services.vision.inspector import Inspector


@pytest.fixture(scope="module")
def line_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("line-test-data")
    write_dataset(root, n_train=0, n_test=24, seed=5)
    return root


def read(path: Path, flag: int = cv2.IMREAD_COLOR) -> np.ndarray:
    image = cv2.imread(str(path), flag)
    assert image is not None, f"cannot read {path}"
    return np.asarray(image)


def synth(data: Path, out: Path, *extra: str) -> int:
    return main(["synth", "--data", str(data), "--category", "synthetic", "--out", str(out), *extra])


@pytest.mark.parametrize("method", ["paint", "perlin"])
def test_a_synthetic_set_is_read_back_by_evaluate(
    method: str, line_data: Path, inspector: Inspector, tmp_path: Path
) -> None:
    out = tmp_path / "synth"
    assert synth(line_data, out, "--method", method, "--n", "16", "--seed", "3") == 0
    category = out / "synthetic"
    images = sorted((category / "test" / "synthetic").iterdir())
    masks = sorted((category / "ground_truth" / "synthetic").iterdir())
    goods = sorted((category / "test" / "good").iterdir())
    assert len(images) == len(masks) == 16 and goods
    assert [p.stem + "_mask" for p in images] == [p.stem for p in masks]
    manifest = json.loads((category / "synthetic.json").read_text())
    assert manifest["method"] == method and len(manifest["images"]) == 16
    for entry, mask_path in zip(manifest["images"], masks, strict=True):
        mask = read(mask_path, cv2.IMREAD_GRAYSCALE)
        assert set(np.unique(mask)) <= {0, 255} and mask.any()
        assert entry["mask_share"] == pytest.approx(float(np.mean(mask > 0)), abs=1e-4)
        original = read(Path(entry["good"]))
        synthetic = read(category / entry["image"])
        assert np.array_equal(original[mask == 0], synthetic[mask == 0])  # unchanged outside the mask
    report = evaluate(inspector, out, "synthetic", progress=False)
    assert report.n_images == 16 + len(goods)
    result = report.as_json()
    assert result["image_auroc"] > 0.7 and result["pixel_auroc"] > 0.8  # the detector sees them


def test_the_same_seed_writes_the_same_set(line_data: Path, tmp_path: Path) -> None:
    assert synth(line_data, tmp_path / "a", "--n", "4", "--seed", "9", "--no-goods") == 0
    assert synth(line_data, tmp_path / "b", "--n", "4", "--seed", "9", "--no-goods") == 0
    for name in ("000.png", "003.png"):
        a = (tmp_path / "a" / "synthetic" / "test" / "synthetic" / name).read_bytes()
        b = (tmp_path / "b" / "synthetic" / "test" / "synthetic" / name).read_bytes()
        assert a == b
    assert not (tmp_path / "a" / "synthetic" / "test" / "good").exists()


def test_it_refuses_a_non_empty_folder_unless_told_and_never_writes_into_the_source(
    line_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "synth"
    assert synth(line_data, out, "--n", "3") == 0
    assert synth(line_data, out, "--n", "2") == 2
    assert "not empty; pass --overwrite" in capsys.readouterr().err
    assert len(list((out / "synthetic" / "test" / "synthetic").iterdir())) == 3
    assert synth(line_data, out, "--n", "2", "--overwrite") == 0
    assert len(list((out / "synthetic" / "test" / "synthetic").iterdir())) == 2
    assert synth(line_data, line_data, "--n", "2", "--overwrite") == 2
    assert "is the source data itself" in capsys.readouterr().err
    assert synth(line_data, out, "--n", "2", "--overwrite", "--split", "train") == 2
    assert "no good images" in capsys.readouterr().err


def test_unreadable_goods_are_skipped_and_listed(line_data: Path, tmp_path: Path) -> None:
    import shutil

    data = tmp_path / "data"
    shutil.copytree(line_data / "synthetic" / "test" / "good", data / "synthetic" / "test" / "good")
    (data / "synthetic" / "test" / "good" / "000-broken.png").write_bytes(b"\x89PNG broken")
    assert synth(data, tmp_path / "out", "--n", "3") == 0
    manifest = json.loads((tmp_path / "out" / "synthetic" / "synthetic.json").read_text())
    assert [Path(s["path"]).name for s in manifest["skipped"]] == ["000-broken.png"]
    assert not (tmp_path / "out" / "synthetic" / "test" / "good" / "000-broken.png").exists()
