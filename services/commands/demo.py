"""``linewatch demo``: a whole synthetic moulding line on this machine, with no server to set up.

Builds the synthetic dataset, trains a detector on its good parts, runs the line (parts off the
synthetic line, process samples from its simulator, records in SQLite, images on disk) and, unless
told not to, serves the dashboard while the line runs. Always ends with the run's summary.
"""

from __future__ import annotations

import os
import secrets
import shutil
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from services.analytics.alerting import Alerting
from services.analytics.clustering import ClusterSettings
from services.api.settings import ApiSettings, hash_key
from services.commands.compose import Api, build_api, open_stores, serve_beside
from services.inference.urls import open_inference
from services.ingest.simulator_source import SimulatorSource
from services.ingest.synthetic import DEFAULT_START, SyntheticLine, write_dataset
from services.ingest.synthetic_source import SyntheticSource
from services.stream.runtime import Line, LineOptions
from services.stream.serving import run_line
from services.stream.summary import LineSummary
from services.vision.inspector import Inspector
from services.vision.train import TrainConfig, train

CATEGORY = "synthetic"

DEMO_CLUSTER_EVERY_S = 60.0
"""The demo clusters its defects this often (the default is every 10 minutes)."""


@dataclass(frozen=True)
class DemoOptions:
    workdir: Path
    parts: int | None = None  # None: until Ctrl-C
    serve: bool = True
    port: int = 8000
    weights: Path | None = None
    activation: str | None = None
    seed: int = 0
    keep_frames: bool = True
    train_parts: int = 60
    fresh: bool = False  # delete an earlier run in workdir instead of keeping it under previous/


def train_detector(options: DemoOptions) -> Path:
    """Write the synthetic dataset's good parts and train a detector on them; returns the model dir."""
    data_root, model_dir = options.workdir / "data", options.workdir / "model"
    print(f"building the synthetic line dataset: {options.train_parts} good parts in {data_root}", flush=True)
    write_dataset(data_root, n_train=options.train_parts, n_test=0, seed=options.seed)
    print("training the detector on them", flush=True)
    card = train(
        TrainConfig(
            data_root=data_root,
            category=CATEGORY,
            out_dir=model_dir,
            weights=options.weights,
            activation=options.activation,
            seed=options.seed,
        )
    )
    print(f"model {card.name} {card.version} in {model_dir}", flush=True)
    return model_dir


RUN_FILES = ("records.db", "records.db-wal", "records.db-shm", "blobs")


def keep_earlier_run(workdir: Path, fresh: bool) -> Path | None:
    """Every demo starts on empty stores: an earlier run's records and blobs in ``workdir`` move to
    ``workdir/previous/<UTC time>/`` (deleted with ``fresh``); where they went, or None."""
    found = [workdir / name for name in RUN_FILES if (workdir / name).exists()]
    if not found:
        return None
    if fresh:
        for path in found:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        print(f"deleted the earlier run's records and blobs in {workdir} (--fresh)")
        return None
    kept = workdir / "previous" / datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    kept.mkdir(parents=True, exist_ok=False)
    for path in found:
        path.rename(kept / path.name)
    print(f"kept the earlier run's records and blobs in {kept} (--fresh deletes them instead)")
    return kept


def serve_command(records_path: Path, blobs_url: str, key: str) -> str:
    """The command that serves this run's stores again, as it works from any folder."""
    linewatch = shutil.which("linewatch") or str(Path(sys.executable).parent / "linewatch")
    return (
        f"LINEWATCH_API_KEYS='{key}' {linewatch} serve --records sqlite:///{records_path} --blobs {blobs_url}"
    )


def run_demo(options: DemoOptions) -> LineSummary:
    workdir, serve, port = options.workdir.resolve(), options.serve, options.port
    parts = f"{options.parts} parts" if options.parts is not None else "parts until Ctrl-C"
    keep_earlier_run(workdir, options.fresh)
    inspector = Inspector.load(train_detector(options))
    # served: a live line, parts taken now at the line's pace; otherwise a replay as fast as it goes
    start = datetime.now(UTC) if options.serve else DEFAULT_START
    frames = SyntheticSource(seed=options.seed, parts=options.parts, realtime=options.serve, start=start)
    machine = SyntheticLine(seed=options.seed, start=start)  # the same line's process, read separately
    process = SimulatorSource(machine.process, machine.line_id, machine.machine_id)
    blobs_url = (workdir / "blobs").as_uri()
    stores = open_stores(
        f"sqlite:///{workdir / 'records.db'}",
        blobs_url,
        group_commit=True,
        labels_url=f"sqlite:///{workdir / 'labels.db'}",
    )
    api: Api | None = None
    key = os.environ.get("LINEWATCH_DEMO_KEY") or secrets.token_urlsafe(12)
    try:
        line_options = LineOptions(keep_frames=options.keep_frames)
        models = {frames.line.recipe: inspector}
        inference = open_inference("process://", models, line_options.max_batch)  # as `linewatch run`
        # drift monitors with their defaults, no webhooks; defects clustered every minute or so
        alerting = Alerting(stores.records, clustering=ClusterSettings(every_s=DEMO_CLUSTER_EVERY_S))
        line = Line(
            [frames], [process], inference, stores.records, stores.blobs, line_options, alerting=alerting
        )
        server = None
        if serve:
            settings = ApiSettings(host="127.0.0.1", port=port, key_hashes=[hash_key(key)])
            api = build_api(settings, stores, models, line)
            server = serve_beside(settings, api)
            print(f"dashboard: {server.url}/dashboard/  (API key for this run: {key})")
            print(f"API docs: {server.url}/docs, line metrics: {server.url}/metrics")
            print("the line is running; Ctrl-C stops it", flush=True)
        else:
            print(f"running the line: {parts}", flush=True)
        summary = run_line(line, server)
        summary.stored_dead_letters = stores.records.count_dead_letters()
    finally:
        if api is not None:
            api.close()
        stores.close()
    print(f"records in {workdir / 'records.db'}, frames and heat maps in {workdir / 'blobs'}")
    print("look again later (the dashboard at http://127.0.0.1:8000/dashboard/, the API with this key):")
    print(f"  {serve_command(workdir / 'records.db', blobs_url, key)}")
    return summary
