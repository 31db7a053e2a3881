"""``/health`` and ``/ready`` for load balancers and orchestrators (public), ``/metrics`` (API key)."""

from fastapi import APIRouter, Response, status
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from services.api.context import Context
from services.api.models import ReadyReport
from services.storage.query import InspectionQuery

router = APIRouter(tags=["health"])
metrics_router = APIRouter(tags=["health"])


@router.get("/health")
def health() -> dict[str, str]:
    """The process is up. Always 200."""
    return {"status": "ok"}


@router.get("/ready", responses={503: {"model": ReadyReport, "description": "Not ready"}})
def ready(context: Context, response: Response) -> ReadyReport:
    """200 when the record store answers and the model, if one is configured, is loaded; else 503."""
    try:
        context.records.query_inspections(InspectionQuery(limit=1))
        records = "ok"
    except Exception as err:  # any failure of the store means not ready; say which
        records = f"error: {type(err).__name__}: {err}"
    models = context.inference.models if context.inference is not None else {}
    if not models:
        model = "not configured"
    elif len(models) == 1:
        model = f"loaded: {next(iter(models.values()))}"
    else:
        model = "loaded: " + ", ".join(f"{recipe} {name}" for recipe, name in sorted(models.items()))
    report = ReadyReport(ready=records == "ok", records=records, model=model)
    response.status_code = status.HTTP_200_OK if report.ready else status.HTTP_503_SERVICE_UNAVAILABLE
    return report


@metrics_router.get(
    "/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}}
)
def metrics(context: Context) -> Response:
    """Prometheus text: the running line's metrics (when given) and the API's own."""
    text = generate_latest(context.metrics.registry)
    if context.registry is not None:
        text = generate_latest(context.registry) + text
    return Response(text, media_type=CONTENT_TYPE_LATEST)
