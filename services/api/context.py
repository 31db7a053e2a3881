"""What every request handler needs (stores, model, metrics), kept on the app and handed out by Depends."""

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Request
from prometheus_client import CollectorRegistry

from services.api.metrics import ApiMetrics
from services.api.settings import ApiSettings
from services.storage.ports import BlobStore, RecordStore
from services.vision.inspector import Inspector


@dataclass
class ApiContext:
    settings: ApiSettings
    records: RecordStore
    blobs: BlobStore
    inspector: Inspector | None
    metrics: ApiMetrics
    registry: CollectorRegistry | None = None
    line_status: Callable[[], dict[str, Any]] | None = None
    inference_lock: threading.Lock = field(default_factory=threading.Lock)  # one batch on the model at a time


def get_context(request: Request) -> ApiContext:
    context: ApiContext = request.app.state.linewatch
    return context


Context = Annotated[ApiContext, Depends(get_context)]
