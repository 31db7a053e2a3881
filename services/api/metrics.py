"""The API's own Prometheus metrics, and the middleware that counts and times every request."""

import time

from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class ApiMetrics:
    """Request counts and latency per route template, inspections per verdict, rejected uploads."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "linewatch_api_requests",
            "HTTP requests answered by the API",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "linewatch_api_request_seconds",
            "Time to answer an HTTP request",
            ["method", "route"],
            registry=self.registry,
        )
        self.inspections = Counter(
            "linewatch_api_inspections",
            "Frames inspected through POST /v1/inspect",
            ["line_id", "camera_id", "verdict"],
            registry=self.registry,
        )
        self.rejected_frames = Counter(
            "linewatch_api_rejected_frames",
            "Uploaded frames refused (each one is also a dead letter; unknown/unknown: too large to read)",
            ["line_id", "camera_id"],
            registry=self.registry,
        )


def route_label(scope: Scope) -> str:
    """The route template (``/v1/inspections/{frame_id}``), never the raw path: labels stay few."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    if isinstance(path, str):
        return path
    if scope.get("path", "").startswith("/dashboard"):
        return "/dashboard"
    return "<unmatched>"


class RequestMetricsMiddleware:
    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        start = time.perf_counter()

        async def send_and_note_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note_status)
        finally:
            method, route = scope["method"], route_label(scope)
            self.metrics.requests.labels(method, route, str(status)).inc()
            self.metrics.latency.labels(method, route).observe(time.perf_counter() - start)
