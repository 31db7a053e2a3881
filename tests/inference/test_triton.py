"""Triton: the model repository ``linewatch triton export`` lays out, and the ``triton://`` adapter
against a real tritonserver (2.51, CPU, from nvidia-pytriton) — killed and started again, its
dynamic batcher, its circuit breaker. The adapter's answers are checked in ``test_contract.py``."""

from __future__ import annotations

import asyncio
import filecmp
from pathlib import Path

import numpy as np
import pytest

from services.inference.ports import InferenceError, InferenceUnavailable, detect_when_served
from services.inference.triton import CircuitBreaker, TritonInference
from services.inference.triton_repo import Serving, export, versions
from services.inference.triton_server import LocalTriton
from services.inference.urls import open_inference
from services.ingest.synthetic import SyntheticLine
from services.steps.detect import detect_batch
from services.vision.inspector import Inspector
from tests.triton_server import ENSEMBLE_RECIPE, RECIPE

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


def frames(n: int) -> list[np.ndarray]:
    return [part.image for part in SyntheticLine(seed=4).parts(n)]


def sizes(images: list[np.ndarray]) -> list[tuple[int, int]]:
    return [(image.shape[0], image.shape[1]) for image in images]


def test_the_committed_repository_is_what_export_lays_out(tmp_path: Path, model_dir: Path) -> None:
    """triton_models/ in the repository is the layout for recipe ``bottle`` (its weights left out)."""
    export(model_dir, tmp_path, "bottle")
    for model in ("bottle", "bottle-preprocess", "bottle-detector"):
        assert (ROOT / "triton_models" / model / "config.pbtxt").read_text() == (
            tmp_path / model / "config.pbtxt"
        ).read_text()
    for model in ("bottle-preprocess", "bottle-detector"):
        assert filecmp.cmp(
            ROOT / "triton_models" / model / "1" / "model.py", tmp_path / model / "1" / "model.py"
        )
    assert (ROOT / "triton_models" / "bottle" / "1").is_dir()  # an ensemble needs its version folder too


def test_export_numbers_versions_and_refuses_to_overwrite(tmp_path: Path, model_dir: Path) -> None:
    assert export(model_dir, tmp_path, "cap-B") == ("cap-B", 1)
    assert export(model_dir, tmp_path, "cap-B") == ("cap-B", 2)
    assert versions(tmp_path / "cap-B-detector") == [1, 2]
    assert not (tmp_path / "cap-B-refine").exists()  # only an ensemble has one
    assert (tmp_path / "cap-B-detector" / "2" / "artifact" / "weights.safetensors").is_file()
    with pytest.raises(FileExistsError, match="--overwrite"):
        export(model_dir, tmp_path, "cap-B", version=1)
    assert export(model_dir, tmp_path, "cap-B", version=1, overwrite=True) == ("cap-B", 1)
    for bad in ("a b", "x-detector", "x-refine", "-lead"):
        with pytest.raises(ValueError, match="recipe"):
            export(model_dir, tmp_path, bad)
    with pytest.raises(ValueError, match="instances"):
        Serving(instances=0)
    text = (tmp_path / "cap-B-detector" / "config.pbtxt").read_text()
    assert "dynamic_batching" in text and "count: 1" in text
    export(model_dir, tmp_path, "cap-C", serving=Serving(dynamic_batching=False, instances=2))
    text = (tmp_path / "cap-C-detector" / "config.pbtxt").read_text()
    assert "dynamic_batching" not in text and "count: 2" in text


def test_the_circuit_breaker_opens_then_lets_one_call_try() -> None:
    now = [0.0]
    breaker = CircuitBreaker(failures=2, reset_s=5.0, clock=lambda: now[0])
    breaker.failed()
    assert breaker.allow() and breaker.state == "closed"
    breaker.failed()
    assert breaker.state == "open" and not breaker.allow()
    assert breaker.retry_in_s() == pytest.approx(5.0)
    now[0] = 5.0
    assert breaker.allow()  # half open: one call goes through
    assert not breaker.allow()  # and only one
    breaker.failed()  # it failed: open again for another reset_s
    assert breaker.state == "open"
    now[0] = 10.0
    assert breaker.allow()
    breaker.succeeded()
    assert breaker.state == "closed" and breaker.allow()


def test_dynamic_batching_scores_concurrent_requests_together(triton: LocalTriton) -> None:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(f"127.0.0.1:{triton.grpc_port}")

    def counts() -> tuple[int, int]:
        stats = client.get_inference_statistics(f"{RECIPE}-detector").model_stats[0]
        return stats.inference_count, stats.execution_count

    before = counts()
    port = TritonInference([RECIPE], triton.grpc_url)

    async def many() -> None:
        await port.start()
        images = frames(8)
        await asyncio.gather(
            *(port.detect(RECIPE, images[i : i + 2], sizes(images[i : i + 2])) for i in (0, 2, 4, 6))
        )
        await port.close()

    asyncio.run(many())
    after = counts()
    inferences, executions = after[0] - before[0], after[1] - before[1]
    assert inferences == 8 + 1  # the eight frames and the warm-up frame
    assert executions < inferences  # some frames shared a batch


def test_triton_killed_and_started_again_mid_stream_loses_no_batch(
    tmp_path: Path, triton_repo: Path, inspector: Inspector
) -> None:
    """Batches sent while the server is down wait (retries, the breaker, then the caller's wait) and
    get the same answers as scoring in-process once it is back; none fails for good."""
    server = LocalTriton(triton_repo, tmp_path / "tritonserver.log").start()
    images = frames(6)
    port = open_inference(
        server.grpc_url + "?retries=1&breaker_failures=1&breaker_reset_s=0.5", {}, recipes=[RECIPE]
    )

    async def stream() -> list[float]:
        await port.start()
        scores = []
        try:
            for i, image in enumerate(images):
                if i == 2:
                    server.kill()
                    with pytest.raises(InferenceUnavailable):
                        await port.detect(RECIPE, [image], sizes([image]))
                    await asyncio.to_thread(server.start)  # back while the next batch waits
                detected = await detect_when_served(port, RECIPE, [image], sizes([image]))
                scores.append(detected.predictions[0].score)
        finally:
            await port.close()
        return scores

    try:
        scores = asyncio.run(stream())
    finally:
        server.stop()
    expected = [p.score for p in detect_batch(inspector, images).predictions]
    np.testing.assert_allclose(scores, expected, atol=1e-4)


def test_start_names_the_recipe_the_server_lacks(triton: LocalTriton) -> None:
    port = TritonInference(["cap-Z"], triton.grpc_url, start_timeout_s=5)
    with pytest.raises(
        InferenceError, match=r"no ready model for recipe\(s\) cap-Z.*linewatch triton export"
    ):
        asyncio.run(port.start())


def test_start_says_when_no_server_answers() -> None:
    port = TritonInference([RECIPE], "triton://127.0.0.1:9", start_timeout_s=1)
    with pytest.raises(InferenceUnavailable, match="not ready"):
        asyncio.run(port.start())


def test_an_ensemble_sends_only_the_frames_past_its_pre_screen_to_its_refine_model_by_bls(
    triton: LocalTriton, ensemble_inspector: Inspector
) -> None:
    """The ensemble's detector runs the pre-screen and hands the frames past it to ``-refine`` (a
    BLS request, one per batch); the answers are those of scoring in-process (test_contract.py
    checks every field), and the refine model saw exactly the frames that passed."""
    import tritonclient.grpc as grpcclient

    from services.vision.ensemble import EnsembleModel

    client = grpcclient.InferenceServerClient(f"127.0.0.1:{triton.grpc_port}")

    def refined() -> int:
        stats = client.get_inference_statistics(f"{ENSEMBLE_RECIPE}-refine").model_stats[0]
        return int(stats.inference_count)

    images = frames(10)
    local = detect_batch(ensemble_inspector, images, sizes(images))
    model = ensemble_inspector.model
    assert isinstance(model, EnsembleModel) and 0 < model.last_passed < len(images)  # a real cascade
    passed = model.last_passed
    before = refined()
    port = TritonInference([ENSEMBLE_RECIPE], triton.grpc_url)

    async def score() -> list[float]:
        await port.start()  # its warm-up frame may pass too: counted before the batch
        try:
            nonlocal before
            before = refined()
            detected = await port.detect(ENSEMBLE_RECIPE, images, sizes(images))
            return [p.score for p in detected.predictions]
        finally:
            await port.close()

    scores = asyncio.run(score())
    np.testing.assert_allclose(scores, [p.score for p in local.predictions], atol=1e-4)
    assert refined() - before == passed
