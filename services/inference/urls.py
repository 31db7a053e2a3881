"""Open an inference port by URL: ``local://``, ``process://`` (``?detectors=N&threads=M``) and
``triton://HOST:PORT`` (a Triton Inference Server's gRPC port; parameters in ``triton.py``)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import cast
from urllib.parse import parse_qsl, urlsplit

from services.adapters import load_adapter
from services.inference.ports import InferencePort
from services.vision.inspector import Inspector

INFERENCE_ADAPTERS = {
    "local": "services.inference.local:LocalInference",
    "process": "services.inference.process:ProcessInference",
    "triton": "services.inference.triton:TritonInference",
}
PARAMS = {"detectors", "threads"}
TRITON_PARAMS = {"timeout_s", "retries", "breaker_failures", "breaker_reset_s", "slots", "start_timeout_s"}
REMOTE = {"triton"}


def is_remote(url: str) -> bool:
    """Whether the models of ``url`` live elsewhere (no need to load them in this process)."""
    return urlsplit(url).scheme.lower() in REMOTE


def open_inference(
    url: str,
    inspectors: Mapping[str, Inspector],
    max_batch: int = 4,
    recipes: Iterable[str] | None = None,
) -> InferencePort:
    """The inference port ``url`` names, over ``inspectors`` (recipe → model); ``max_batch`` is the
    largest batch it will be given (worker processes warm up on it). A remote port
    (:func:`is_remote`) needs no inspectors, only the ``recipes`` it serves (default: the
    inspectors' recipes)."""
    adapter = load_adapter(INFERENCE_ADAPTERS, url, "inference URL", "process://?detectors=2")
    parts = urlsplit(url)
    params = dict(parse_qsl(parts.query, keep_blank_values=True))
    if parts.scheme.lower() == "triton":
        return open_triton(adapter, url, params, recipes if recipes is not None else inspectors)
    unknown = sorted(set(params) - PARAMS)
    if unknown or parts.netloc or parts.path not in ("", "/"):
        raise ValueError(
            f"{url!r}: expected {parts.scheme}:// with optional parameters {', '.join(sorted(PARAMS))}"
            + (f"; unknown: {', '.join(unknown)}" if unknown else "")
        )
    try:
        counts = {name: int(value) for name, value in params.items()}
    except ValueError as err:
        raise ValueError(f"{url!r}: detectors and threads must be whole numbers") from err
    if parts.scheme.lower() == "process":
        counts["warm_batch"] = max_batch
    return cast(InferencePort, adapter(inspectors, url=url, **counts))


def open_triton(
    adapter: Callable[..., object], url: str, params: dict[str, str], recipes: Iterable[str]
) -> InferencePort:
    unknown = sorted(set(params) - TRITON_PARAMS)
    if unknown:
        raise ValueError(
            f"{url!r}: unknown parameters {', '.join(unknown)} (known: {', '.join(sorted(TRITON_PARAMS))})"
        )
    try:
        values: dict[str, float | int] = {
            name: int(value) if name in ("retries", "breaker_failures", "slots") else float(value)
            for name, value in params.items()
        }
    except ValueError as err:
        raise ValueError(f"{url!r}: {err}") from err
    return cast(InferencePort, adapter(list(recipes), url=url, **values))
