"""The composition root: where the commands turn settings into stores, models, inference, a line and
an API. Nothing else opens adapters by URL or decides which runtime gets which port, so ``linewatch
run``, ``demo`` and ``serve`` (and a Faust worker) are wired the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from services.storage.ports import BlobStore, LabelStore, RecordStore

if TYPE_CHECKING:
    from fastapi import FastAPI

    from services.api.server import ApiServer
    from services.api.settings import ApiSettings
    from services.config import LinewatchSettings
    from services.inference.ports import InferencePort
    from services.inference.thread import InferenceThread
    from services.registry.live_shadow import LiveShadow
    from services.stream.runtime import Line
    from services.vision.inspector import Inspector

log = logging.getLogger(__name__)

API_INFERENCE_URL = "local://?detectors=1"
"""The inference port of an API beside a line or in tests: one detector thread of its process."""
SERVE_INFERENCE_URL = "process://?detectors=2&threads=1"
"""``linewatch serve``'s default: two detector processes, so that the web server's own Python
(multipart parsing, decoding, storing) never stalls scoring, as it did with detector threads
(docs/benchmarks.md)."""
API_MAX_BATCH = 8  # uploads scored together at most (micro-batching)


@dataclass
class Stores:
    records: RecordStore
    blobs: BlobStore
    labels: LabelStore | None = None

    def close(self) -> None:
        try:
            self.records.close()
        finally:
            try:
                self.blobs.close()
            finally:
                if self.labels is not None:
                    self.labels.close()


def open_stores(
    records_url: str, blobs_url: str, group_commit: bool = False, labels_url: str | None = None
) -> Stores:
    """The record and blob stores the URLs name, and the label store when ``labels_url`` is given;
    raises ValueError or OSError (nothing left open)."""
    from services.storage.stores import open_blob_store, open_label_store, open_record_store

    records = open_record_store(records_url)
    try:
        blobs = open_blob_store(blobs_url, group_commit=group_commit)
    except BaseException:
        records.close()
        raise
    try:
        labels = open_label_store(labels_url) if labels_url is not None else None
    except BaseException:
        Stores(records, blobs).close()
        raise
    return Stores(records, blobs, labels)


def load_models(models: Mapping[str, Path]) -> dict[str, Inspector]:
    """Recipe → the model loaded from its directory."""
    from services.vision.inspector import Inspector

    return {recipe: Inspector.load(path) for recipe, path in models.items()}


def load_local_models(settings: LinewatchSettings) -> dict[str, Inspector]:
    """The models this process must hold to score the settings' recipes: none when the inference
    port is remote (``triton://``: the server holds them)."""
    from services.inference.urls import is_remote

    if is_remote(settings.inference_url()):
        return {}
    inspectors = load_models(settings.models)
    if settings.registry is not None:
        from services.registry.files import open_registry
        from services.registry.follow import production_inspectors

        inspectors |= production_inspectors(open_registry(settings.registry))  # the registry's win
    return inspectors


def parse_model_args(values: list[str]) -> dict[str, Path]:
    """``[RECIPE=]DIR`` arguments as recipe → directory; without ``RECIPE=`` the model's own name
    (its card's) is the recipe it serves."""
    from services.vision.artifact import read_card

    models: dict[str, Path] = {}
    for value in values:
        recipe, equals, path = value.partition("=")
        if not equals:
            path, recipe = value, read_card(Path(value)).name
        if recipe in models:
            raise ValueError(f"two models for recipe {recipe!r}: {models[recipe]} and {path}")
        models[recipe] = Path(path)
    return models


def build_line(
    settings: LinewatchSettings, inspectors: Mapping[str, Inspector], stores: Stores, resume: bool = False
) -> Line:
    """The embedded line the settings describe; raises ValueError for bad URLs or settings."""
    from services.inference.urls import open_inference
    from services.ingest.urls import open_frame_source, open_process_source
    from services.stream.runtime import Line

    if not settings.frame_sources:
        raise ValueError("the settings name no frame_sources")
    context = settings.frame_context()
    frames = [open_frame_source(url, context) for url in settings.frame_sources]
    process = [open_process_source(url, settings.line_id) for url in settings.process_sources]
    options = replace(settings.line_options(), skip_stored=resume)
    url = settings.inference_url()
    inference = open_inference(url, inspectors, options.max_batch, settings.models)
    from services.analytics.alerting import Alerting

    alerting = Alerting(stores.records, settings.alerts, settings.clustering)
    from services.registry.live_shadow import LiveShadow

    shadow = LiveShadow() if settings.registry is not None and inspectors else None
    inference, companions = follow_registry(settings, inference, inspectors, url, options.max_batch, shadow)
    return Line(
        frames,
        process,
        inference,
        stores.records,
        stores.blobs,
        options,
        alerting=alerting,
        companions=companions,
        shadow=shadow,
    )


def follow_registry(
    settings: LinewatchSettings,
    inference: InferencePort,
    inspectors: Mapping[str, Inspector],
    url: str,
    max_batch: int | None = None,
    shadow: LiveShadow | None = None,
) -> tuple[InferencePort, list[Callable[[], Coroutine[Any, Any, None]]]]:
    """With a registry in the settings and local models: the port made swappable and the follower
    that swaps models when the registry's stages change (to run beside the port, in its loop), and
    that scores the recipes' shadow models in ``shadow`` when given; otherwise the port as it is
    and nothing to run."""
    if settings.registry is None or not inspectors:  # (a remote port's server holds the models)
        return inference, []
    from services.inference.swap import SwappablePort
    from services.inference.urls import open_inference
    from services.registry.files import open_registry
    from services.registry.follow import RegistryFollower

    batch = max_batch or settings.batching.max_batch
    swappable = SwappablePort(inference)
    follower = RegistryFollower(
        open_registry(settings.registry),
        swappable,
        inspectors,
        lambda models: open_inference(url, models, batch),
        settings.registry_poll_s,
        shadow,
    )
    return swappable, [follower.run]


@dataclass
class Api:
    """The API app and the inference thread behind its ``POST /v1/inspect`` (None without models)."""

    app: FastAPI
    inference: InferenceThread | None = None
    server: ApiServer | None = field(default=None, repr=False)

    def start_inference(self) -> None:
        if self.inference is not None:
            self.inference.start_in_thread()

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
        if self.inference is not None:
            self.inference.close_thread()


def build_api(
    settings: ApiSettings,
    stores: Stores,
    inspectors: Mapping[str, Inspector] | None = None,
    line: Line | None = None,
    inference_url: str | None = None,
    recipes: Iterable[str] = (),
    registry_url: str | None = None,
) -> Api:
    """The API over the stores, scoring uploads with ``inspectors`` (when given) through
    ``inference_url`` (default :data:`API_INFERENCE_URL`); a remote URL (``triton://…``) needs no
    inspectors, only the ``recipes`` (default: the line's). Beside a ``line`` it admits uploads
    under the line's rules, joins them to its process history, and reports the line's metrics and
    state. Raises ApiServerError when the settings are refused."""
    from services.api.app import create_app
    from services.api.server import ApiServerError
    from services.inference.batching import MicroBatcher
    from services.inference.thread import InferenceThread
    from services.inference.urls import is_remote, open_inference
    from services.registry.files import open_registry

    url, port = inference_url or API_INFERENCE_URL, None
    if is_remote(url):
        served = frozenset(recipes) or (line.inference.recipes if line is not None else frozenset())
        if served:
            port = open_inference(url, {}, recipes=served)
    elif inspectors:
        port = open_inference(url, inspectors)
    # concurrent uploads share batches: one detector thread scores a batch while the next one fills
    inference = InferenceThread(MicroBatcher(port, API_MAX_BATCH)) if port is not None else None
    try:
        app = create_app(
            settings,
            stores.records,
            stores.blobs,
            inference,
            line.metrics.registry if line is not None else None,
            line.status if line is not None else None,
            line.options.admission(inference.recipes) if line is not None and inference else None,
            line.history if line is not None else None,
            stores.labels,
            {recipe: inspector.card for recipe, inspector in (inspectors or {}).items()},
            open_registry(registry_url) if registry_url is not None else None,
        )
    except ValueError as err:
        raise ApiServerError(str(err)) from err
    return Api(app, inference)


def serve_beside(settings: ApiSettings, api: Api) -> ApiServer:
    """Start ``api``'s inference and serve it from a thread on the settings' host and port."""
    from services.api.server import ApiServer

    api.start_inference()
    api.server = ApiServer(api.app, settings.host, settings.port)
    return api.server
