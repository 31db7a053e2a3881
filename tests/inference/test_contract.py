"""The inference port's contract, run against every adapter: the same answers as scoring in-process.

Real adapters over a real model trained on the synthetic line: ``local://`` (detector threads),
``process://`` (detector worker processes) and ``triton://`` (a real tritonserver on the CPU,
serving the model exported with ``linewatch triton export``). Every detector kind is served alike:
the DeSTSeg model and the PatchCore + DeSTSeg ensemble (a cascade: half the frames pass its
pre-screen) get the same answers through each adapter.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from services.inference.batching import MicroBatcher
from services.inference.ports import InferenceError, InferencePort
from services.inference.thread import InferenceThread
from services.inference.urls import open_inference
from services.ingest.synthetic import SyntheticLine
from services.steps.detect import Detected, detect_batch
from services.vision.inspector import Inspector

RECIPE = "housing-A"
DESTSEG_RECIPE = "housing-D"  # as tests/triton_server.py exports it
ENSEMBLE_RECIPE = "housing-E"
URLS = ["local://?detectors=2&threads=1", "process://?detectors=2&threads=1", "triton", "batched"]


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    return [part.image for part in SyntheticLine(seed=4).parts(10)]  # (holds defective parts)


@pytest.fixture(scope="module", params=URLS)
def port(request: pytest.FixtureRequest, inspector: Inspector) -> Iterator[InferenceThread]:
    """The adapter, started (in a loop thread of its own, so that each test may use its own loop)."""
    url = request.param
    if url == "triton":
        url = request.getfixturevalue("triton").grpc_url + "?retries=1"
    if url == "batched":  # the micro-batcher in front of one detector thread (as the API uses it)
        port: InferencePort = MicroBatcher(open_inference("local://?detectors=1", {RECIPE: inspector}), 4)
    else:
        port = open_inference(url, {RECIPE: inspector}, max_batch=4)
    served = InferenceThread(port)
    served.start_in_thread()
    yield served
    served.close_thread()


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


def sizes(images: list[np.ndarray], scale: int = 1) -> list[tuple[int, int]]:
    return [(image.shape[0] * scale, image.shape[1] * scale) for image in images]


def assert_same(ours: Detected, expected: Detected) -> None:
    assert [p.verdict for p in ours.predictions] == [p.verdict for p in expected.predictions]
    for theirs, local in zip(ours.predictions, expected.predictions, strict=True):
        assert theirs.score == pytest.approx(local.score, abs=1e-4)
        assert [d.bbox for d in theirs.defects] == [d.bbox for d in local.defects]
        np.testing.assert_allclose(theirs.embedding, local.embedding, atol=1e-4)
    for theirs_map, local_map in zip(ours.heatmaps, expected.heatmaps, strict=True):
        assert theirs_map.shape == local_map.shape and theirs_map.dtype == np.uint8
        assert np.abs(theirs_map.astype(int) - local_map.astype(int)).max() <= 1
    assert (ours.model_name, ours.model_version) == (expected.model_name, expected.model_version)


def test_it_says_what_it_serves(port: InferencePort, inspector: Inspector) -> None:
    assert port.recipes == frozenset({RECIPE})
    assert port.models == {RECIPE: f"{inspector.card.name} {inspector.card.version}"}
    assert port.slots >= 2


def test_a_batch_gets_the_answer_of_scoring_it_in_process(
    port: InferencePort, inspector: Inspector, frames: list[np.ndarray]
) -> None:
    batch = frames
    ours = run(port.detect(RECIPE, batch, sizes(batch, 2)))
    assert_same(ours, detect_batch(inspector, batch, sizes(batch, 2)))
    assert "NG" in [p.verdict for p in ours.predictions]
    assert {"preprocess", "infer"} <= set(ours.timings_ms)


def test_more_batches_than_slots_at_once_each_get_their_own_answer(
    port: InferencePort, inspector: Inspector, frames: list[np.ndarray]
) -> None:
    batches = [frames[:1], frames[1:3], frames[3:6], frames[6:10], frames[:2], frames[2:5]]

    async def all_at_once() -> list[Detected]:
        return list(await asyncio.gather(*(port.detect(RECIPE, b, sizes(b)) for b in batches)))

    for batch, answer in zip(batches, run(all_at_once()), strict=True):
        assert_same(answer, detect_batch(inspector, batch))


def test_an_unknown_recipe_is_a_key_error(port: InferencePort, frames: list[np.ndarray]) -> None:
    with pytest.raises(KeyError):
        run(port.detect("cap-B", frames[:1], sizes(frames[:1])))


def test_a_batch_it_cannot_score_fails_alone(port: InferencePort, frames: list[np.ndarray]) -> None:
    bad = [np.zeros((4, 4), np.float64)]  # not an RGB frame
    with pytest.raises(InferenceError):
        run(port.detect(RECIPE, bad, [(4, 4)]))
    assert len(run(port.detect(RECIPE, frames[:2], sizes(frames[:2]))).predictions) == 2

    async def beside_good_ones() -> list[Any]:  # sent at once: good batches are not failed by a bad one
        calls = [port.detect(RECIPE, frames[:2], sizes(frames[:2])), port.detect(RECIPE, bad, [(4, 4)])]
        calls.append(port.detect(RECIPE, frames[2:3], sizes(frames[2:3])))
        return list(await asyncio.gather(*calls, return_exceptions=True))

    good, failed, also_good = run(beside_good_ones())
    assert isinstance(failed, InferenceError)
    assert len(good.predictions) == 2 and len(also_good.predictions) == 1


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("triton+grpc://host:8001", "scheme 'triton+grpc' is not one of local:, process:, triton:"),
        ("triton://host:8001?deadline=3", "unknown parameters deadline"),
        ("triton://host:8001?retries=many", "invalid literal"),
        ("triton://:8001", "expected triton://HOST:PORT"),
        ("local://?workers=2", "unknown: workers"),
        ("local://somehost", "expected local://"),
        ("process://?detectors=two", "whole numbers"),
    ],
)
def test_bad_inference_urls_say_what_is_wrong(url: str, message: str, inspector: Inspector) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        open_inference(url, {RECIPE: inspector})


@pytest.mark.parametrize("kind", ["destseg", "ensemble"])
@pytest.mark.parametrize("url", ["local://?detectors=1", "process://?detectors=1&threads=1", "triton"])
def test_other_detectors_get_the_answer_of_scoring_them_in_process(
    url: str, kind: str, request: pytest.FixtureRequest, frames: list[np.ndarray]
) -> None:
    recipe = DESTSEG_RECIPE if kind == "destseg" else ENSEMBLE_RECIPE
    inspector: Inspector = request.getfixturevalue(f"{kind}_inspector")
    assert inspector.card.kind == kind
    if url == "triton":
        url = request.getfixturevalue("triton").grpc_url + "?retries=1"
    served = InferenceThread(open_inference(url, {recipe: inspector}, max_batch=4))
    served.start_in_thread()
    try:
        batch = frames[:5]
        ours = run(served.detect(recipe, batch, sizes(batch)))
        assert_same(ours, detect_batch(inspector, batch, sizes(batch)))
        assert served.models == {recipe: f"{inspector.card.name} {inspector.card.version}"}
    finally:
        served.close_thread()
