"""Alerts to webhooks: delivered, retried, dead-lettered; the line never waits for an endpoint.
The endpoint is a real HTTP server on loopback started by the test."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from schemas.alert import ALERT_EXAMPLE, Alert
from schemas.process import ProcessSnapshot
from services.analytics.alerting import Alerting, AlertSettings
from services.analytics.drift import DriftSettings
from services.analytics.webhooks import WebhookNotifier
from services.ingest.synthetic_records import synthetic_inspections
from services.network import free_port
from services.storage.sqlite_record_store import SqliteRecordStore


class Endpoint:
    """A webhook receiver: records the JSON bodies; ``status`` to answer with; ``hold`` blocks replies."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.status = 200
        self.hold = threading.Event()
        self.hold.set()
        self.started = threading.Event()  # set when a request has arrived
        endpoint = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                endpoint.started.set()
                endpoint.hold.wait(10)
                endpoint.bodies.append(json.loads(body))
                self.send_response(endpoint.status)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.hold.set()
        self.server.shutdown()


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    server = Endpoint()
    yield server
    server.close()


def _alert(n: int = 0) -> Alert:
    return Alert.model_validate({**ALERT_EXAMPLE, "alert_id": f"01956039-de00-7d41-b2c7-0e6f4a93d2{n:02d}"})


def test_alerts_reach_the_endpoint(endpoint: Endpoint) -> None:
    dead: list[tuple[Alert, str, str]] = []
    notifier = WebhookNotifier([endpoint.url], lambda *a: dead.append(a), first_wait_s=0.05)
    for n in range(3):
        notifier.send(_alert(n))
    notifier.close()
    assert [b["alert_id"][-2:] for b in endpoint.bodies] == ["00", "01", "02"]
    assert endpoint.bodies[0]["message"] == ALERT_EXAMPLE["message"]
    assert dead == [] and notifier.delivered == 3


def test_a_failing_endpoint_is_retried_then_dead_lettered(endpoint: Endpoint) -> None:
    dead: list[tuple[Alert, str, str]] = []
    endpoint.status = 503
    notifier = WebhookNotifier([endpoint.url], lambda *a: dead.append(a), retries=2, first_wait_s=0.05)
    notifier.send(_alert())
    notifier.close()
    assert len(endpoint.bodies) == 3  # the first try and two retries
    ((alert, url, reason),) = dead
    assert alert.alert_id == _alert().alert_id and url == endpoint.url and reason == "HTTP 503"


def test_an_endpoint_that_is_down_does_not_hold_the_sender_and_loses_nothing(endpoint: Endpoint) -> None:
    dead: list[tuple[Alert, str, str]] = []
    endpoint.hold.clear()  # the endpoint hangs on the first request
    down = f"http://127.0.0.1:{free_port()}/nobody-listens"
    notifier = WebhookNotifier([endpoint.url, down], lambda *a: dead.append(a), retries=1,
                               first_wait_s=0.05, queue_size=2, timeout_s=2)  # fmt: skip
    notifier.send(_alert(0))
    assert endpoint.started.wait(5)  # the first alert is being delivered, and hangs
    for n in range(1, 5):  # two wait in the queue, two are refused at once
        notifier.send(_alert(n))
    refused = [a.alert_id[-2:] for a, _, reason in dead if "queue full" in reason]
    assert len(refused) == 2 * 2  # both URLs get their dead letter, and send() returned meanwhile
    endpoint.hold.set()
    notifier.close()
    delivered = {b["alert_id"][-2:] for b in endpoint.bodies}
    assert delivered | {r for r in refused} == {"00", "01", "02", "03", "04"}
    assert {a.alert_id[-2:] for a, url, _ in dead if url == down} == {"00", "01", "02", "03", "04"}


def test_the_line_side_stores_alerts_and_dead_letters_undelivered_ones(
    tmp_path: Any, endpoint: Endpoint
) -> None:
    endpoint.status = 400  # refuses every alert: no retries
    settings = AlertSettings(drift=DriftSettings(process_window=20, check_every=10), webhooks=[endpoint.url])
    with SqliteRecordStore(tmp_path / "r.db") as records:
        alerting = Alerting(records, settings)
        missing = ProcessSnapshot(status="missing")
        frames = [r.model_copy(update={"process": missing}) for r in synthetic_inspections(40, seed=1)]
        raised = alerting.after_stored(frames)
        alerting.close()
        assert [a.kind for a in raised] == ["process_data"]
        assert records.list_alerts() == raised
        (letter,) = records.list_dead_letters()
        assert letter.source == "alert_webhook" and "HTTP 400" in letter.reason
        assert letter.original_ref == endpoint.url


def test_a_webhook_must_be_http() -> None:
    with pytest.raises(ValueError, match="http"):
        WebhookNotifier(["ftp://x"], lambda *a: None)
