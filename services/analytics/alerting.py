"""What a runtime does after storing records: drift monitors, alerts stored, webhooks called.

Both runtimes hold one :class:`Alerting` and call :meth:`Alerting.after_stored` with each group of
records once they are stored (the embedded line in its store step, the Faust worker after its
batch is stored; it also publishes each alert on the alerts topic). An alert is stored (the
dashboard and ``GET /v1/alerts`` show it) and sent to the webhooks; an alert no webhook took is a
dead letter from source ``alert_webhook``.

With clustering settings, the embedded line's :class:`Alerting` also starts periodic defect
clustering (:class:`~services.analytics.clustering.PeriodicClustering`) in the background; its
novel-cluster alerts go to the same webhooks. The distributed line runs clustering from its
leader's timer instead, so that one worker, not each, clusters the shared store.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field

from schemas.alert import Alert
from schemas.dead_letter import reject
from schemas.inspection import Inspection
from services.analytics.clustering import ClusterSettings, PeriodicClustering
from services.analytics.drift import DriftMonitor, DriftSettings
from services.analytics.webhooks import WebhookNotifier
from services.storage.ports import RecordStore

log = logging.getLogger(__name__)


class AlertSettings(BaseModel):
    """The ``alerts:`` section of the settings."""

    model_config = ConfigDict(extra="forbid")

    drift: DriftSettings = Field(default_factory=DriftSettings)
    webhooks: list[str] = Field(default_factory=list, description="URLs that get each alert as a JSON POST")
    webhook_retries: int = Field(default=5, ge=0)
    webhook_timeout_s: float = Field(default=5.0, gt=0)
    webhook_queue: int = Field(default=1000, ge=1, description="Alerts waiting for the webhooks at most")


CLUSTERING_WAIT_S = 300.0
"""How long closing waits for a clustering run in progress."""


class Alerting:
    def __init__(
        self,
        records: RecordStore,
        settings: AlertSettings | None = None,
        clustering: ClusterSettings | None = None,
    ) -> None:
        settings = settings or AlertSettings()
        self.records = records
        self.monitor = DriftMonitor(settings.drift)
        self.notifier = WebhookNotifier(
            settings.webhooks,
            self._undelivered,
            retries=settings.webhook_retries,
            timeout_s=settings.webhook_timeout_s,
            queue_size=settings.webhook_queue,
        )
        self.raised = 0
        self.clustering = (
            PeriodicClustering(records, clustering, on_alert=self.notifier.send)
            if clustering is not None and clustering.enabled
            else None
        )

    def after_stored(self, inspections: Sequence[Inspection]) -> list[Alert]:
        """Feed the monitors; store and send the alerts they raise; start a clustering run when one
        is due. Never raises: alerting trouble is logged and must not stop the line."""
        if self.clustering is not None:
            self.clustering.count(inspections)
            self.clustering.poll()
        try:
            alerts = self.monitor.observe_many(list(inspections))
        except Exception:
            log.exception("the drift monitors failed on a group of %d records", len(inspections))
            return []
        for alert in alerts:
            self.raised += 1
            log.warning("alert (%s, %s): %s", alert.kind, alert.severity, alert.message)
            try:
                self.records.add_alert(alert)
            except Exception:
                log.exception("could not store alert %s", alert.alert_id)
            self.notifier.send(alert)
        return alerts

    def _undelivered(self, alert: Alert, url: str, reason: str) -> None:
        detail = f"alert {alert.alert_id} ({alert.kind}) not delivered: {reason}"
        self.records.add_dead_letter(reject("alert_webhook", "webhook_error", detail, url))

    def close(self) -> None:
        if self.clustering is not None:
            self.clustering.wait(CLUSTERING_WAIT_S)
        self.notifier.close()
