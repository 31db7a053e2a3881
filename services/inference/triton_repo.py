"""A Triton model repository for linewatch artifacts: ``linewatch triton export`` lays out one version.

Each recipe gets three models, ``<recipe>`` being the one clients call::

    <recipe>-preprocess/   Python backend: decoded frames → the detector's input pixels
    <recipe>-detector/     Python backend: pixels → predictions and heat maps (the artifact)
    <recipe>/              ensemble: preprocess → detector

and an ensemble artifact (``--detector ensemble``) a fourth, called by the detector's BLS::

    <recipe>-refine/       Python backend: the frames past the pre-screen → the refining members'
                           calibrated scores and maps (its own instances and batching, so that the
                           expensive members scale apart from the pre-screen)

Each has ``config.pbtxt`` and numbered version folders (``1/``, ``2/`` …; Triton serves the
newest); the artifact is copied into the version, so that a version is what was exported, whatever
happens to the model folder later. Dynamic batching and instance groups are set on both Python
models. A later member (the diffusion detector) is one more model and one more ensemble step.
The configuration does not depend on the artifact (its image size is read by the models), so
``triton_models/`` in the repository is this layout for the recipe ``bottle``, without weights.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from services.vision.artifact import CARD_FILE, read_card

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,100}$")
PREPROCESS, DETECTOR, REFINE = "preprocess", "detector", "refine"
SHIM = '''"""linewatch's {member} model for Triton's Python backend (services/inference/triton_backend.py)."""

from services.inference.triton_backend import {cls} as TritonPythonModel

__all__ = ["TritonPythonModel"]
'''


@dataclass(frozen=True)
class Serving:
    """How Triton serves a recipe: instances of each Python model, its batching."""

    instances: int = 1  # detector processes (each holds the model)
    preprocess_instances: int = 1
    max_batch: int = 8
    dynamic_batching: bool = True
    queue_delay_us: int = 2000  # how long the batcher waits to fill a batch
    torch_threads: int = 1  # per instance

    def __post_init__(self) -> None:
        for name in ("instances", "preprocess_instances", "max_batch", "torch_threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.queue_delay_us < 0:
            raise ValueError("queue_delay_us must not be negative")


def member(recipe: str, part: str) -> str:
    return f"{recipe}-{part}"


def batching(serving: Serving) -> str:
    if not serving.dynamic_batching:
        return ""
    return f"dynamic_batching {{\n  max_queue_delay_microseconds: {serving.queue_delay_us}\n}}\n"


def python_config(
    name: str, serving: Serving, count: int, inputs: str, outputs: str, extra: dict[str, str] | None = None
) -> str:
    more = "".join(
        f'parameters {{\n  key: "{key}"\n  value: {{ string_value: "{value}" }}\n}}\n'
        for key, value in (extra or {}).items()
    )
    return (
        f'name: "{name}"\nbackend: "python"\nmax_batch_size: {serving.max_batch}\n'
        f"{inputs}{outputs}{batching(serving)}"
        f"instance_group [\n  {{\n    kind: KIND_CPU\n    count: {count}\n  }}\n]\n"
        f'parameters {{\n  key: "artifact"\n  value: {{ string_value: "artifact" }}\n}}\n'
        f'parameters {{\n  key: "torch_threads"\n  value: {{ string_value: "{serving.torch_threads}" }}\n}}\n'
        + more
    )


def tensor(name: str, dtype: str, dims: str) -> str:
    return f'  {{\n    name: "{name}"\n    data_type: {dtype}\n    dims: [ {dims} ]\n  }}'


def io(kind: str, *tensors: str) -> str:
    return f"{kind} [\n" + ",\n".join(tensors) + "\n]\n"


def configs(recipe: str, serving: Serving, refine: bool = False) -> dict[str, str]:
    """Model name → its config.pbtxt, for the recipe's three models (four with ``refine``: an
    ensemble's refining members in a model of their own, called by the detector's BLS)."""
    pre, det = member(recipe, PREPROCESS), member(recipe, DETECTOR)
    image = tensor("IMAGE", "TYPE_UINT8", "-1, -1, 3")
    size = tensor("SIZE", "TYPE_INT32", "2")
    pixels = tensor("PIXELS", "TYPE_FP32", "3, -1, -1")
    took = tensor("PREPROCESS_MS", "TYPE_FP32", "1")
    result = tensor("RESULT", "TYPE_UINT8", "-1")
    heatmap = tensor("HEATMAP", "TYPE_UINT8", "-1, -1")
    ensemble = (
        f'name: "{recipe}"\nplatform: "ensemble"\nmax_batch_size: {serving.max_batch}\n'
        + io("input", image, size)
        + io("output", result, heatmap)
        + "ensemble_scheduling {\n  step [\n"
        f'    {{\n      model_name: "{pre}"\n      model_version: -1\n'
        '      input_map { key: "IMAGE" value: "IMAGE" }\n'
        '      output_map { key: "PIXELS" value: "pixels" }\n'
        '      output_map { key: "PREPROCESS_MS" value: "preprocess_ms" }\n    },\n'
        f'    {{\n      model_name: "{det}"\n      model_version: -1\n'
        '      input_map { key: "PIXELS" value: "pixels" }\n'
        '      input_map { key: "SIZE" value: "SIZE" }\n'
        '      input_map { key: "PREPROCESS_MS" value: "preprocess_ms" }\n'
        '      output_map { key: "RESULT" value: "RESULT" }\n'
        '      output_map { key: "HEATMAP" value: "HEATMAP" }\n    }\n'
        "  ]\n}\n"
        f'parameters {{\n  key: "linewatch_recipe"\n  value: {{ string_value: "{recipe}" }}\n}}\n'
    )
    ref = member(recipe, REFINE)
    models = {
        pre: python_config(
            pre, serving, serving.preprocess_instances, io("input", image), io("output", pixels, took)
        ),
        det: python_config(
            det,
            serving,
            serving.instances,
            io("input", pixels, size, took),
            io("output", result, heatmap),
            {"refine_model": ref} if refine else None,
        ),
        recipe: ensemble,
    }
    if refine:
        image_z = tensor("IMAGE_Z", "TYPE_FP64", "-1")
        map_z = tensor("MAP_Z", "TYPE_FP64", "-1, -1, -1")
        models[ref] = python_config(
            ref, serving, serving.instances, io("input", pixels), io("output", image_z, map_z)
        )
    return models


def versions(model_folder: Path) -> list[int]:
    if not model_folder.is_dir():
        return []
    return sorted(int(p.name) for p in model_folder.iterdir() if p.is_dir() and p.name.isdigit())


def export(
    model_dir: Path,
    repo: Path,
    recipe: str | None = None,
    version: int | None = None,
    serving: Serving | None = None,
    overwrite: bool = False,
) -> tuple[str, int]:
    """Lay out ``model_dir`` (a linewatch artifact) as version ``version`` (default: one past the
    newest there) of the recipe's models in ``repo``; returns (recipe, version). Refuses an existing
    version unless ``overwrite``; raises ValueError for a bad name or version, and what
    :func:`read_card` raises for a folder that is not an artifact."""
    card = read_card(model_dir)  # fails early on a folder that is no model
    recipe = recipe or card.name
    if not NAME.match(recipe) or recipe.endswith((f"-{PREPROCESS}", f"-{DETECTOR}", f"-{REFINE}")):
        raise ValueError(
            f"recipe {recipe!r}: letters, digits, '_', '.', '-' only (Triton model names), "
            f"not ending in -{PREPROCESS}, -{DETECTOR} or -{REFINE}"
        )
    serving = serving or Serving()
    existing = versions(repo / member(recipe, DETECTOR))
    version = version if version is not None else (existing[-1] + 1 if existing else 1)
    if version < 1:
        raise ValueError(f"version must be at least 1, got {version}")
    if version in existing and not overwrite:
        raise FileExistsError(f"{repo / member(recipe, DETECTOR) / str(version)} exists: give --overwrite")
    refine = card.kind == "ensemble"
    if not refine:  # a model that was an ensemble before: its refine model would serve stale members
        shutil.rmtree(repo / member(recipe, REFINE) / str(version), ignore_errors=True)
    for name, text in configs(recipe, serving, refine).items():
        folder = repo / name
        target = folder / str(version)
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        (folder / "config.pbtxt").write_text(text)
        if name in (member(recipe, DETECTOR), member(recipe, REFINE)):
            cls = "DetectorModel" if name == member(recipe, DETECTOR) else "RefineModel"
            (target / "model.py").write_text(SHIM.format(member=name.rsplit("-", 1)[1], cls=cls))
            shutil.copytree(model_dir, target / "artifact")
        elif name == member(recipe, PREPROCESS):
            (target / "model.py").write_text(SHIM.format(member=PREPROCESS, cls="PreprocessModel"))
            (target / "artifact").mkdir()
            shutil.copy2(model_dir / CARD_FILE, target / "artifact" / CARD_FILE)
    return recipe, version
