"""Open an inference port by URL: ``local://``, ``process://`` (``?detectors=N&threads=M``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import cast
from urllib.parse import parse_qsl, urlsplit

from services.adapters import load_adapter
from services.inference.ports import InferencePort
from services.vision.inspector import Inspector

INFERENCE_ADAPTERS = {
    "local": "services.inference.local:LocalInference",
    "process": "services.inference.process:ProcessInference",
}
PARAMS = {"detectors", "threads"}


def open_inference(url: str, inspectors: Mapping[str, Inspector], max_batch: int = 4) -> InferencePort:
    """The inference port ``url`` names, over ``inspectors`` (recipe → model); ``max_batch`` is the
    largest batch it will be given (worker processes warm up on it)."""
    adapter = load_adapter(INFERENCE_ADAPTERS, url, "inference URL", "process://?detectors=2")
    parts = urlsplit(url)
    params = dict(parse_qsl(parts.query, keep_blank_values=True))
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
