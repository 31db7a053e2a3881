"""A real Triton Inference Server for the tests: ``tritonserver`` 2.51 on the CPU, from the PyPI
package nvidia-pytriton (unpacked by ``make triton``, or here when it is missing), over a model
repository exported from the synthetic line's models (PatchCore as ``housing-A``, DeSTSeg as
``housing-D``, the PatchCore + DeSTSeg ensemble as ``housing-E``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from services.inference.triton_repo import Serving, export
from services.inference.triton_server import LocalTriton, install

RECIPE = "housing-A"
DESTSEG_RECIPE = "housing-D"
ENSEMBLE_RECIPE = "housing-E"


@pytest.fixture(scope="session")
def triton_repo(
    tmp_path_factory: pytest.TempPathFactory,
    model_dir: Path,
    destseg_model_dir: Path,
    ensemble_model_dir: Path,
) -> Path:
    repo = tmp_path_factory.mktemp("triton-repo")
    export(ensemble_model_dir, repo, ENSEMBLE_RECIPE, serving=Serving(instances=1, max_batch=8))
    export(model_dir, repo, RECIPE, serving=Serving(instances=1, max_batch=8, queue_delay_us=2000))
    export(destseg_model_dir, repo, DESTSEG_RECIPE, serving=Serving(instances=1, max_batch=8))
    return repo


@pytest.fixture(scope="session")
def triton(tmp_path_factory: pytest.TempPathFactory, triton_repo: Path) -> Iterator[LocalTriton]:
    """tritonserver over ``triton_repo``, for the whole session (a test that kills it starts it again)."""
    install()
    server = LocalTriton(triton_repo, tmp_path_factory.mktemp("triton") / "tritonserver.log").start()
    yield server
    server.stop()
