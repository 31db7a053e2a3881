"""Shared test fixtures: where the real data and weights live (../shared beside the checkout), and
detectors trained once per session on the synthetic line (PatchCore, a DeSTSeg trained for a few
steps: enough to check that every runtime serves it alike, not to detect anything, and an ensemble
of a PatchCore with that DeSTSeg behind a cascade)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from services.ingest.synthetic import write_dataset
from services.vision.destseg import DestsegParams
from services.vision.inspector import Inspector
from services.vision.train import TrainConfig, train

SHARED = Path(os.environ.get("LINEWATCH_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
DATASETS = SHARED / "datasets"
MOBILENET_WEIGHTS = SHARED / "weights" / "mobilenet_v2_imagenet_dequant.pth"


@pytest.fixture(scope="session")
def mobilenet_weights() -> Path:
    if not MOBILENET_WEIGHTS.is_file():
        pytest.skip(f"shared weights not found at {MOBILENET_WEIGHTS} (set LINEWATCH_SHARED)")
    return MOBILENET_WEIGHTS


@pytest.fixture(scope="session")
def bottle_root() -> Path:
    root = DATASETS / "mvtec_bottle"
    if not (root / "bottle" / "train" / "good").is_dir():
        pytest.skip(f"shared bottle dataset not found under {root} (set LINEWATCH_SHARED)")
    return root


TRAIN_PARTS = 40


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synthetic-data")
    write_dataset(root, n_train=TRAIN_PARTS, n_test=0, seed=0)
    return root


@pytest.fixture(scope="session")
def destseg_model_dir(
    tmp_path_factory: pytest.TempPathFactory, synthetic_data: Path, mobilenet_weights: Path
) -> Path:
    out = tmp_path_factory.mktemp("destseg-model")
    train(
        TrainConfig(
            data_root=synthetic_data,
            category="synthetic",
            out_dir=out,
            detector="destseg",
            weights=mobilenet_weights,
            activation="relu",
            image_size=128,
            destseg=DestsegParams(student_steps=12, segmentation_steps=12, batch_size=4, eval_every=6),
            device="cpu",
            progress=False,
        )
    )
    return out


@pytest.fixture(scope="session")
def ensemble_model_dir(
    tmp_path_factory: pytest.TempPathFactory, synthetic_data: Path, destseg_model_dir: Path
) -> Path:
    """PatchCore (trained here, at DeSTSeg's 128 px) and the session's DeSTSeg (copied in); half
    of the good frames go past the pre-screen."""
    out = tmp_path_factory.mktemp("ensemble-model")
    train(
        TrainConfig(
            data_root=synthetic_data,
            category="synthetic",
            out_dir=out,
            detector="ensemble",
            weights=MOBILENET_WEIGHTS,
            activation="relu",
            image_size=128,
            members=("patchcore", str(destseg_model_dir)),
            pass_share=0.5,
            progress=False,
        )
    )
    return out


@pytest.fixture(scope="session")
def ensemble_inspector(ensemble_model_dir: Path) -> Inspector:
    return Inspector.load(ensemble_model_dir)


@pytest.fixture(scope="session")
def destseg_inspector(destseg_model_dir: Path) -> Inspector:
    return Inspector.load(destseg_model_dir)


@pytest.fixture(scope="session")
def model_dir(
    tmp_path_factory: pytest.TempPathFactory, synthetic_data: Path, mobilenet_weights: Path
) -> Path:
    root = synthetic_data
    out = tmp_path_factory.mktemp("model")
    train(
        TrainConfig(
            data_root=root,
            category="synthetic",
            out_dir=out,
            weights=mobilenet_weights,
            activation="relu",
            progress=False,
        )
    )
    return out


@pytest.fixture(scope="session")
def inspector(model_dir: Path) -> Inspector:
    return Inspector.load(model_dir)
