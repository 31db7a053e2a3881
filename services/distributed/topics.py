"""Creating linewatch's topics at start, with the configured partitions and replication."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from services.distributed.producer import client_config

if TYPE_CHECKING:
    from services.config import KafkaSettings

log = logging.getLogger(__name__)


def topic_names(settings: KafkaSettings) -> list[str]:
    topics = settings.topics
    return [topics.frames, topics.process, topics.inspections, topics.alerts, topics.dead_letters]


def ensure_topics(
    settings: KafkaSettings, extra: list[str] | None = None, timeout_s: float = 30.0
) -> list[str]:
    """Create every linewatch topic (and ``extra``) that does not exist yet; the ones created.

    Raises RuntimeError naming the broker when it cannot be reached or refuses a topic."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient(client_config(settings))
    try:
        existing = set(admin.list_topics(timeout=timeout_s).topics)
    except KafkaException as err:
        raise RuntimeError(f"cannot reach the Kafka broker at {settings.bootstrap_servers}: {err}") from err
    wanted = [name for name in [*topic_names(settings), *(extra or [])] if name not in existing]
    if not wanted:
        return []
    futures = admin.create_topics(
        [NewTopic(name, settings.partitions, settings.replication_factor) for name in wanted],
        operation_timeout=timeout_s,
    )
    created = []
    for name, future in futures.items():
        try:
            future.result(timeout_s)
            created.append(name)
        except KafkaException as err:
            if "TOPIC_ALREADY_EXISTS" not in str(err):
                raise RuntimeError(
                    f"cannot create topic {name} on {settings.bootstrap_servers}: {err}"
                ) from err
    log.info("created topics %s (%d partitions)", ", ".join(created), settings.partitions)
    return created
