"""Shared test fixtures: where the real data and weights live (../shared beside the checkout)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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
