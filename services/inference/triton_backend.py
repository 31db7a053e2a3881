"""linewatch's models inside Triton's Python backend: the ``preprocess`` and ``detector`` members
of a recipe's ensemble (their ``model.py`` files in ``triton_models/`` import these classes).

They run the same step functions as ``local://`` and ``process://`` (:mod:`services.steps.detect`),
on the same artifact directory, so a frame scores the same wherever it goes. Tensors move only
through DLPack: the Python backend's stub was built against numpy 1, and numpy 2 arrays handed
through ``as_numpy``/``pb_utils.Tensor`` come back corrupted (checked with tritonserver 2.51).

``detector`` scores every request Triton's dynamic batcher hands it in one batch; each frame's
answer is its prediction as JSON bytes (``wire.py``) and its heat map as a uint8 tensor.

For an ensemble, ``detector`` runs the pre-screen member and sends the frames past it to the
recipe's ``refine`` model in a BLS request (Triton's business-logic scripting): the refining
members then run on their own instances with their own dynamic batching, and the fusion is the
ensemble's own code, so the numbers are those of scoring in-process.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.dlpack import to_dlpack

from services.inference.local import set_torch_threads
from services.inference.wire import encode_prediction
from services.steps.admit import elapsed_ms
from services.steps.detect import score_preprocessed
from services.vision.artifact import read_card
from services.vision.dataset import preprocess
from services.vision.ensemble import EnsembleModel
from services.vision.inspector import Inspector
from services.vision.tracing import TRACE_GUARD


def _pb() -> Any:
    import triton_python_backend_utils as pb_utils  # only inside Triton's Python backend

    return pb_utils


def model_parameters(args: dict[str, str]) -> tuple[Path, dict[str, str]]:
    """The version folder of this model and its config's string parameters."""
    config = json.loads(args["model_config"])
    params = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
    return Path(args["model_repository"]) / str(args["model_version"]), params


def input_tensor(request: Any, name: str) -> torch.Tensor:
    tensor = _pb().get_input_tensor_by_name(request, name)
    if tensor is None:
        raise ValueError(f"input {name} is missing")
    return torch.from_dlpack(tensor.to_dlpack())


def output_tensor(name: str, tensor: torch.Tensor) -> Any:
    return _pb().Tensor.from_dlpack(name, to_dlpack(tensor.contiguous()))


def error_response(err: Exception) -> Any:
    pb = _pb()
    return pb.InferenceResponse(output_tensors=[], error=pb.TritonError(f"{type(err).__name__}: {err}"))


class PreprocessModel:
    """IMAGE (b, H, W, 3) uint8 RGB frames → PIXELS (b, 3, S, S) float32, the detector's input."""

    def initialize(self, args: dict[str, str]) -> None:
        folder, params = model_parameters(args)
        set_torch_threads(int(params.get("torch_threads", "1")))
        self.card = read_card(folder / params.get("artifact", "artifact"))

    def execute(self, requests: list[Any]) -> list[Any]:
        responses = []
        for request in requests:
            try:
                images = input_tensor(request, "IMAGE")
                if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != 3:
                    raise ValueError(f"IMAGE must be (b, H, W, 3) uint8, got {tuple(images.shape)}")
                start = time.perf_counter()
                frames = images.numpy()
                pixels = torch.stack([preprocess(f, self.card.image_size, self.card.roi) for f in frames])
                took = torch.tensor([[elapsed_ms(start)]] * len(frames), dtype=torch.float32)
                responses.append(
                    _pb().InferenceResponse(
                        [output_tensor("PIXELS", pixels), output_tensor("PREPROCESS_MS", took)]
                    )
                )
            except Exception as err:  # one bad request fails alone
                responses.append(error_response(err))
        return responses

    def finalize(self) -> None:
        pass


class DetectorModel:
    """PIXELS (b, 3, S, S) and SIZE (b, 2: height, width of the frame) → RESULT (b, L) uint8 JSON of
    each frame's prediction and HEATMAP (b, height, width) uint8 heat map levels."""

    def initialize(self, args: dict[str, str]) -> None:
        folder, params = model_parameters(args)
        set_torch_threads(int(params.get("torch_threads", "1")))
        self.inspector = Inspector.load(folder / params.get("artifact", "artifact"))
        refine = params.get("refine_model")
        if refine and isinstance(self.inspector.model, EnsembleModel):
            self.inspector.model.refiner = BlsRefiner(refine, int(args["model_version"]))

    def execute(self, requests: list[Any]) -> list[Any]:
        parts: list[tuple[Any, torch.Tensor, list[tuple[int, int]], list[float]]] = []
        responses: list[Any] = [None] * len(requests)
        for i, request in enumerate(requests):
            try:
                pixels, size = input_tensor(request, "PIXELS"), input_tensor(request, "SIZE")
                took = _pb().get_input_tensor_by_name(request, "PREPROCESS_MS")
                ms = torch.from_dlpack(took.to_dlpack()).reshape(-1).tolist() if took is not None else []
                sizes = [(int(h), int(w)) for h, w in size.reshape(-1, 2).tolist()]
                if len(sizes) != pixels.shape[0] or len({s for s in sizes}) != 1:
                    raise ValueError(f"SIZE must give one (height, width) per frame, all equal: {sizes}")
                parts.append((i, pixels, sizes, ms))
            except Exception as err:
                responses[i] = error_response(err)
        if parts:
            try:
                batch = torch.cat([pixels for _, pixels, _, _ in parts])
                sizes = [s for _, _, request_sizes, _ in parts for s in request_sizes]
                detected = score_preprocessed(self.inspector, batch, sizes)
                at = 0
                for i, _, request_sizes, ms in parts:
                    n = len(request_sizes)
                    responses[i] = self.answer(detected, at, n, len(batch), ms)
                    at += n
            except Exception as err:  # the model failed on the batch: each of its requests says so
                for i, *_ in parts:
                    responses[i] = error_response(err)
        return responses

    def answer(self, detected: Any, at: int, n: int, batch: int, preprocess_ms: list[float]) -> Any:
        extra = {
            "model_name": detected.model_name,
            "model_version": detected.model_version,
            "infer_ms": detected.timings_ms["infer"],
            "batch": batch,
            "preprocess_ms": preprocess_ms[0] if preprocess_ms else 0.0,
        }
        encoded = [encode_prediction(p, extra) for p in detected.predictions[at : at + n]]
        width = max(len(e) for e in encoded)
        rows = np.full((n, width), ord(" "), np.uint8)  # padded with spaces, which JSON ignores
        for row, data in zip(rows, encoded, strict=True):
            row[: len(data)] = np.frombuffer(data, np.uint8)
        heatmaps = torch.from_numpy(np.stack(detected.heatmaps[at : at + n]))
        return _pb().InferenceResponse(
            [output_tensor("RESULT", torch.from_numpy(rows)), output_tensor("HEATMAP", heatmaps)]
        )

    def finalize(self) -> None:
        pass


class BlsRefiner:
    """An ensemble's ``refiner`` inside Triton: the frames past the pre-screen go to the recipe's
    ``refine`` model (the same version) in one BLS request; its error fails the batch."""

    def __init__(self, model_name: str, version: int) -> None:
        self.model_name = model_name
        self.version = version
        self.calls = 0

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pb = _pb()
        request = pb.InferenceRequest(
            model_name=self.model_name,
            model_version=self.version,
            requested_output_names=["IMAGE_Z", "MAP_Z"],
            inputs=[output_tensor("PIXELS", images.float())],
        )
        response = request.exec()
        if response.has_error():
            raise RuntimeError(f"{self.model_name}: {response.error().message()}")
        self.calls += 1
        outputs = []
        for name in ("IMAGE_Z", "MAP_Z"):
            tensor = pb.get_output_tensor_by_name(response, name)
            outputs.append(torch.from_dlpack(tensor.to_dlpack()).clone())
        return outputs[0], outputs[1]


class RefineModel:
    """PIXELS (b, 3, S, S) → IMAGE_Z (b, M-1) and MAP_Z (b, M-1, S, S) float64: an ensemble's
    members after the pre-screen (:meth:`EnsembleModel.refine`), for its detector's BLS requests."""

    def initialize(self, args: dict[str, str]) -> None:
        folder, params = model_parameters(args)
        set_torch_threads(int(params.get("torch_threads", "1")))
        model = Inspector.load(folder / params.get("artifact", "artifact")).model
        if not isinstance(model, EnsembleModel):
            raise ValueError(f"{folder}: a refine model serves an ensemble, not a {type(model).__name__}")
        self.model = model

    def execute(self, requests: list[Any]) -> list[Any]:
        responses: list[Any] = [None] * len(requests)
        parts: list[tuple[int, torch.Tensor]] = []
        for i, request in enumerate(requests):
            try:
                parts.append((i, input_tensor(request, "PIXELS")))
            except Exception as err:
                responses[i] = error_response(err)
        if parts:
            try:
                with TRACE_GUARD.shared(), torch.inference_mode():
                    image_z, map_z = self.model.refine(torch.cat([pixels for _, pixels in parts]))
                at = 0
                for i, pixels in parts:
                    n = pixels.shape[0]
                    responses[i] = _pb().InferenceResponse(
                        [
                            output_tensor("IMAGE_Z", image_z[at : at + n]),
                            output_tensor("MAP_Z", map_z[at : at + n]),
                        ]
                    )
                    at += n
            except Exception as err:  # the members failed on the batch: each request says so
                for i, _ in parts:
                    responses[i] = error_response(err)
        return responses

    def finalize(self) -> None:
        pass
