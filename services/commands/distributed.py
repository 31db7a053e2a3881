"""The distributed runtime's commands: ``linewatch ingest frames|process`` and ``linewatch worker``."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def add_commands(sub: argparse._SubParsersAction) -> None:
    ingest = sub.add_parser(
        "ingest",
        help="publish frames or process samples to Kafka (the distributed line's producers)",
        description="Reads sources by URL (as `linewatch run` does) and publishes to the topics of the "
        "config's kafka section: frames as references to their bytes in the blob store (the claim check), "
        "process samples as they are. Ctrl-C stops reading and waits until what was read is delivered.",
    )
    ingest.add_argument("kind", choices=["frames", "process"], help="what to publish")
    ingest.add_argument(
        "urls", nargs="*", help="source URLs (default: the config's frame_ / process_sources)"
    )
    ingest.add_argument("--config", type=Path, default=Path("linewatch.yaml"), help="YAML settings file")
    ingest.set_defaults(handler=run_ingest)

    worker = sub.add_parser(
        "worker",
        help="run a Faust worker of the distributed line (inspect, process table, record sink)",
        description="Joins the workers of the config's kafka app_id: they share the topics' partitions; "
        "start more on other machines to scale out. Ctrl-C stops it (what it had not finished is "
        "redelivered).",
    )
    worker.add_argument("--config", type=Path, default=Path("linewatch.yaml"), help="YAML settings file")
    worker.add_argument(
        "--datadir", type=Path, default=Path("runs/worker"), help="the worker's local state (%(default)s)"
    )
    worker.set_defaults(handler=run_worker)


def run_ingest(args: argparse.Namespace) -> int:
    from services.commands.compose import open_stores
    from services.config import load_settings
    from services.distributed.ingest import publish_frames, publish_process
    from services.distributed.producer import Publisher
    from services.distributed.topics import ensure_topics
    from services.ingest.urls import open_frame_source, open_process_source

    try:
        settings = load_settings(args.config)
        if args.kind == "frames":
            urls = args.urls or settings.frame_sources
            frame_sources = [open_frame_source(url, settings.frame_context()) for url in urls]
        else:
            urls = args.urls or settings.process_sources
            process_sources = [open_process_source(url, settings.line_id) for url in urls]
        if not urls:
            raise ValueError(f"no {args.kind} sources: give URLs or set them in {args.config}")
        ensure_topics(settings.kafka)
        publisher = Publisher(settings.kafka, name=f"linewatch-ingest-{args.kind}")
    except (ValueError, OSError, RuntimeError) as err:
        print(f"linewatch ingest: error: {err}", file=sys.stderr)
        return 2
    topics, stop = settings.kafka.topics, threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    if args.kind == "frames":
        options = settings.line_options()
        rules = options.admission(frozenset(settings.models)) if settings.models else None
        if rules is None:
            print(
                f"linewatch ingest: error: {args.config} names no models (their recipes are admitted)",
                file=sys.stderr,
            )
            return 2
        stores = open_stores(settings.stores.records, settings.stores.blobs)
        try:
            summary = publish_frames(
                frame_sources, rules, stores.blobs, publisher, topics.frames, topics.dead_letters, stop
            )
        finally:
            stores.close()
    else:
        summary = publish_process(process_sources, publisher, topics.process, topics.dead_letters, stop)
    waiting = publisher.flush(60.0)
    letters = ", ".join(f"{code} {n}" for code, n in sorted(summary.dead_letters.items())) or "none"
    print(
        f"published {summary.published} {args.kind} records to {settings.kafka.bootstrap_servers}; "
        f"dead letters: {letters}; delivered {publisher.delivered}, failed {publisher.failed}, "
        f"still waiting {waiting}"
    )
    for failure in summary.failed_sources:
        print(f"source failed: {failure}", file=sys.stderr)
    return 0 if waiting == 0 and publisher.failed == 0 and not summary.failed_sources else 1


def run_worker(args: argparse.Namespace) -> int:
    import faust

    from services.analytics.alerting import Alerting
    from services.analytics.clustering import PeriodicClustering
    from services.commands.compose import follow_registry, load_local_models, open_stores
    from services.config import load_settings
    from services.distributed.process_reader import ProcessReader
    from services.distributed.topics import ensure_topics
    from services.distributed.worker import Resources, build_app
    from services.inference.batching import MicroBatcher
    from services.inference.thread import InferenceThread
    from services.inference.urls import open_inference
    from services.steps.join import ProcessHistory
    from services.storage.stores import open_record_store

    try:
        settings = load_settings(args.config)
        if not settings.models and settings.registry is None:
            raise ValueError(f"{args.config} names no models and no registry")
        inspectors = load_local_models(settings)
        url = settings.inference_url()
        inference = open_inference(
            url, inspectors, settings.batching.max_batch, settings.models or inspectors
        )
        inference, companions = follow_registry(
            settings, inference, inspectors, url, settings.batching.max_batch
        )
        ensure_topics(settings.kafka)
        stores = open_stores(settings.stores.records, settings.stores.blobs, group_commit=True)
        sink = open_record_store(settings.kafka.sink_records) if settings.kafka.sink_records else None
    except (ValueError, OSError, RuntimeError) as err:
        print(f"linewatch worker: error: {err}", file=sys.stderr)
        return 2
    args.datadir.mkdir(parents=True, exist_ok=True)
    history = ProcessHistory(settings.process.max_age_s, settings.process.clock_skew_s)
    reader = ProcessReader(settings.kafka, history)
    batched = MicroBatcher(inference, settings.batching.max_batch)  # the agent's frames share batches
    alerting = Alerting(stores.records, settings.alerts)  # clustering runs from the leader's timer
    clustering = PeriodicClustering(stores.records, settings.clustering, on_alert=alerting.notifier.send)
    resources = Resources(
        stores.records, stores.blobs, InferenceThread(batched, companions), reader, sink, alerting, clustering
    )
    app = build_app(settings, resources, args.datadir)
    log.info(
        "worker of %s on %s, models for %s",
        settings.kafka.app_id,
        settings.kafka.bootstrap_servers,
        ", ".join(sorted(inspectors)),
    )
    signal.signal(signal.SIGUSR1, _dump_tasks)
    try:
        resources.start()
        level = os.environ.get("LINEWATCH_WORKER_LOG", "INFO")
        faust.Worker(app, loglevel=level, quiet=True).execute_from_commandline()
    finally:
        resources.close()
    return 0


def _dump_tasks(*_: object) -> None:
    """SIGUSR1: log where every asyncio task of the worker waits (for a worker that seems stuck)."""
    import asyncio

    try:
        tasks = asyncio.all_tasks(asyncio.get_event_loop())
    except RuntimeError:
        return
    for task in tasks:
        chain: list[str] = []
        awaited: Any = task.get_coro()
        while awaited is not None and len(chain) < 40:
            frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "ag_frame", None)
            if frame is not None:
                chain.append(
                    f"{frame.f_code.co_filename.rsplit('/', 2)[-1]}:{frame.f_lineno} {frame.f_code.co_name}"
                )
            awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "ag_await", None)
        log.warning("task %s waits in: %s", task.get_name(), " -> ".join(chain) or repr(task))
