"""Alerts to HTTP webhooks, without ever slowing the line.

``send`` only puts the alert on a bounded queue; one background thread POSTs each alert as JSON to
every URL, retrying with back-off (1, 2, 4 … s) up to ``retries`` times. An alert that cannot be
delivered (retries spent, or the queue full because the endpoint has been down for long) is
handed to ``on_dead`` (the runtimes store it as a dead letter), never silently dropped.
"""

from __future__ import annotations

import logging
import queue
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence

from schemas.alert import Alert

log = logging.getLogger(__name__)

DeadAlert = Callable[[Alert, str, str], None]
"""``on_dead(alert, url, reason)``."""


class WebhookNotifier:
    """POSTs alerts to webhook URLs from a background thread (see the module's docstring)."""

    def __init__(
        self,
        urls: Sequence[str],
        on_dead: DeadAlert,
        *,
        retries: int = 5,
        timeout_s: float = 5.0,
        queue_size: int = 1000,
        first_wait_s: float = 1.0,
        headers: dict[str, str] | None = None,
    ) -> None:
        for url in urls:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"a webhook must be an http(s) URL, got {url!r}")
        self.urls = list(urls)
        self.on_dead = on_dead
        self.retries, self.timeout_s, self.first_wait_s = retries, timeout_s, first_wait_s
        self.headers = {"Content-Type": "application/json", **(headers or {})}
        self._queue: queue.Queue[Alert | None] = queue.Queue(maxsize=queue_size)
        self._stopping = threading.Event()
        self.delivered = 0
        self._thread = threading.Thread(target=self._run, name="alert-webhooks", daemon=True)
        self._thread.start()

    def send(self, alert: Alert) -> None:
        """Queue the alert for every URL; returns at once."""
        if not self.urls:
            return
        try:
            self._queue.put_nowait(alert)
        except queue.Full:
            for url in self.urls:
                self._dead(alert, url, "webhook queue full: the endpoint has been failing for long")

    def close(self, timeout_s: float = 10.0) -> None:
        """Deliver what is queued (for up to ``timeout_s``), then stop; what is left becomes dead."""
        self._queue.put(None)
        self._thread.join(timeout_s)
        self._stopping.set()
        self._thread.join(max(timeout_s, self.timeout_s) + 1)
        while True:
            try:
                alert = self._queue.get_nowait()
            except queue.Empty:
                break
            if alert is not None:
                for url in self.urls:
                    self._dead(alert, url, "not delivered before shutdown")

    def _run(self) -> None:
        while True:
            alert = self._queue.get()
            if alert is None:
                return
            body = alert.model_dump_json().encode("utf-8")
            for url in self.urls:
                self._deliver(alert, url, body)

    def _deliver(self, alert: Alert, url: str, body: bytes) -> None:
        wait, reason = self.first_wait_s, ""
        for attempt in range(self.retries + 1):
            try:
                request = urllib.request.Request(url, data=body, headers=self.headers, method="POST")
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    response.read()
                self.delivered += 1
                return
            except urllib.error.HTTPError as err:
                reason = f"HTTP {err.code}"
                if 400 <= err.code < 500 and err.code not in (408, 429):
                    break  # the endpoint refuses this alert: retrying will not help
            except (OSError, ValueError) as err:
                reason = f"{type(err).__name__}: {err}"
            if attempt < self.retries and not self._stopping.wait(wait):
                log.warning("webhook %s failed (%s); retrying in %.1f s", url, reason, wait)
                wait *= 2
            elif self._stopping.is_set():
                break
        self._dead(alert, url, reason or "not delivered")

    def _dead(self, alert: Alert, url: str, reason: str) -> None:
        log.error("alert %s not delivered to %s: %s", alert.alert_id, url, reason)
        try:
            self.on_dead(alert, url, reason)
        except Exception:  # the store may be away too: say so, keep going
            log.exception("could not keep the undelivered alert %s", alert.alert_id)
