"""What every request handler needs (stores, inference, metrics), kept on the app, handed out by Depends."""

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Request
from prometheus_client import CollectorRegistry

from services.api.metrics import ApiMetrics
from services.api.settings import ApiSettings
from services.inference.ports import InferencePort
from services.registry.ports import ModelRegistry
from services.steps.admit import AdmissionRules
from services.steps.join import ProcessHistory
from services.storage.ports import BlobStore, LabelStore, RecordStore
from services.vision.artifact import ModelCard


@dataclass
class ApiContext:
    settings: ApiSettings
    records: RecordStore
    blobs: BlobStore
    inference: InferencePort | None  # None: POST /v1/inspect answers 503
    metrics: ApiMetrics
    rules: AdmissionRules  # what an uploaded frame must satisfy (the line's own rules beside a line)
    registry: CollectorRegistry | None = None
    line_status: Callable[[], dict[str, Any]] | None = None
    history: ProcessHistory | None = None  # the running line's process history, joined to uploads
    labels: LabelStore | None = None  # None: the /v1/labels routes answer 503
    cards: dict[str, ModelCard] = field(default_factory=dict)  # recipe -> the card of its model (/v1/models)
    model_registry: ModelRegistry | None = None  # None: the /v1/registry routes answer 503


def get_context(request: Request) -> ApiContext:
    context: ApiContext = request.app.state.linewatch
    return context


Context = Annotated[ApiContext, Depends(get_context)]
