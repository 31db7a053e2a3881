"""Publishing records to Kafka (confluent-kafka): keyed, compressed, delivered or said so.

Delivery is confirmed per record (a delivery callback); a record the broker refused is counted and
logged with its reason, never dropped silently. While the broker is away, records wait in
librdkafka's local queue (``buffer_records`` at most, retried until delivered: no delivery
timeout); when that queue is full, :meth:`Publisher.publish` waits (the source is held back) and
says so once, instead of dropping anything.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from services.config import KafkaSettings

log = logging.getLogger(__name__)

POLL_S = 0.5  # how long a full local queue waits for deliveries before trying again


def client_config(settings: KafkaSettings) -> dict[str, Any]:
    """librdkafka settings every linewatch client shares: brokers and security."""
    config: dict[str, Any] = {
        "bootstrap.servers": settings.bootstrap_servers,
        "security.protocol": settings.security_protocol,
    }
    if settings.sasl_mechanism:
        config["sasl.mechanism"] = settings.sasl_mechanism
        config["sasl.username"] = settings.sasl_username or ""
        config["sasl.password"] = settings.sasl_password or ""
    if settings.ssl_cafile is not None:
        config["ssl.ca.location"] = str(settings.ssl_cafile)
    return config


def producer_config(settings: KafkaSettings) -> dict[str, Any]:
    return client_config(settings) | {
        "partitioner": "murmur2_random",  # the partitions Faust (Java's partitioner) expects for a key
        "batch.num.messages": settings.producer_batch_records,
        "compression.type": settings.compression,
        "enable.idempotence": settings.idempotent_producer,
        "acks": "all",
        "message.timeout.ms": 0,  # retry until delivered: the local queue, bounded, holds them
        "queue.buffering.max.messages": settings.buffer_records,
        "linger.ms": 5,
    }


class Publisher:
    """A Kafka producer that confirms every record it publishes."""

    def __init__(self, settings: KafkaSettings, name: str = "linewatch") -> None:
        from confluent_kafka import Producer

        self.name = name
        self._producer = Producer(producer_config(settings) | {"client.id": name})
        self._lock = threading.Lock()
        self.sent = self.delivered = self.failed = 0
        self._waiting_since: float | None = None

    def _on_delivery(self, err: Any, msg: Any) -> None:
        with self._lock:
            if err is None:
                self.delivered += 1
            else:
                self.failed += 1
                log.error("%s: record to %s was not delivered: %s", self.name, msg.topic(), err)

    def publish(self, topic: str, key: bytes | None, value: bytes) -> None:
        """Hand the record to the producer, waiting while its local queue is full."""
        while True:
            try:
                self._producer.produce(topic, value=value, key=key, on_delivery=self._on_delivery)
                break
            except BufferError:
                if self._waiting_since is None:
                    self._waiting_since = time.monotonic()
                    log.warning(
                        "%s: %d records wait for the broker (is it reachable?); holding the source back",
                        self.name,
                        len(self._producer),
                    )
                self._producer.poll(POLL_S)
        if self._waiting_since is not None:
            log.warning(
                "%s: the broker takes records again after %.1f s",
                self.name,
                time.monotonic() - self._waiting_since,
            )
            self._waiting_since = None
        self.sent += 1
        self._producer.poll(0)

    @property
    def waiting(self) -> int:
        """Records handed over and not delivered yet."""
        return len(self._producer)

    def flush(self, timeout_s: float = 30.0) -> int:
        """Wait until every record is delivered (or ``timeout_s``); the number still waiting."""
        return int(self._producer.flush(timeout_s))
