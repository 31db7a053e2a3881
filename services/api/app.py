"""The FastAPI application: ``create_app`` wires the stores, the model and the routers together."""

from collections.abc import Callable, Mapping
from typing import Any

from fastapi import Depends, FastAPI
from prometheus_client import CollectorRegistry

from services.api.auth import require_api_key
from services.api.context import ApiContext
from services.api.limits import BodySizeLimitMiddleware
from services.api.metrics import ApiMetrics, RequestMetricsMiddleware
from services.api.routes import analytics, dashboard, docs, health, inspect, inspections, line
from services.api.routes import labels as label_routes
from services.api.routes import models as model_routes
from services.api.routes import registry as registry_routes
from services.api.settings import ApiSettings
from services.inference.ports import InferencePort
from services.registry.ports import ModelRegistry
from services.steps.admit import AdmissionRules
from services.steps.join import ProcessHistory
from services.storage.ports import BlobStore, LabelStore, RecordStore
from services.vision.artifact import ModelCard

DESCRIPTION = """\
Inspect frames from AOI machines and read back what the line found.

Send the API key as `X-API-Key: <key>` or `Authorization: Bearer <key>`. `/health`, `/ready`,
these docs and the dashboard at `/dashboard/` are public; everything else needs the key.
"""


def create_app(
    settings: ApiSettings,
    records: RecordStore,
    blobs: BlobStore,
    inference: InferencePort | None = None,
    registry: CollectorRegistry | None = None,
    line_status: Callable[[], dict[str, Any]] | None = None,
    rules: AdmissionRules | None = None,
    history: ProcessHistory | None = None,
    labels: LabelStore | None = None,
    cards: Mapping[str, ModelCard] | None = None,
    model_registry: ModelRegistry | None = None,
) -> FastAPI:
    """The API over ``records`` and ``blobs``; without ``inference``, POST /v1/inspect answers 503.

    ``inference`` must be usable from the request's loop (an
    :class:`~services.inference.thread.InferenceThread`, started by the caller). ``rules`` are what
    an uploaded frame must satisfy (default: a recipe the inference port has a model for);
    ``history`` the running line's process history, joined to each upload. ``registry`` holds the
    running line's metrics for ``/metrics``; ``line_status()`` adds the line's own state to
    ``/v1/status``. ``labels`` holds the review queue (``/v1/labels``; 503 without it);
    ``cards`` are the served models' cards (``/v1/models``: thresholds and operating curves);
    ``model_registry`` the registry (``/v1/registry``: list, promote, roll back; 503 without it).
    """
    if settings.auth_required and not settings.key_hashes:
        raise ValueError(
            "the API requires keys but none are configured: set LINEWATCH_API_KEYS (plain, comma "
            "separated) or LINEWATCH_API_KEY_HASHES, or LINEWATCH_API_AUTH_REQUIRED=false on a closed network"
        )
    app = FastAPI(title="linewatch", description=DESCRIPTION, docs_url=None, redoc_url=None)
    metrics = ApiMetrics()
    if rules is None:
        rules = AdmissionRules(recipes=inference.recipes if inference is not None else frozenset())
    app.state.linewatch = ApiContext(
        settings,
        records,
        blobs,
        inference,
        metrics,
        rules,
        registry,
        line_status,
        history,
        labels,
        dict(cards or {}),
        model_registry,
    )
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_request_bytes)
    app.add_middleware(RequestMetricsMiddleware, metrics=metrics)  # outermost: counts the 413s too
    app.include_router(health.router)
    needs_key = [Depends(require_api_key)]
    routers = (
        health.metrics_router,
        inspect.router,
        inspections.router,
        line.router,
        analytics.router,
        label_routes.router,
        model_routes.router,
        registry_routes.router,
    )
    for router in routers:
        app.include_router(router, dependencies=needs_key)
    dashboard.mount_dashboard(app)
    docs.mount_docs(app)
    return app
