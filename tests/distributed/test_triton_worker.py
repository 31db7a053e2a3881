"""The distributed line with its detectors on Triton: frames → real broker (Tansu) → ``linewatch
worker`` → a real tritonserver (CPU) hosting the recipe's ensemble → records in SQLite. The worker
loads no model itself."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from services.config import load_settings
from services.inference.triton_server import LocalTriton
from services.storage.query import InspectionQuery
from tests.distributed.conftest import Worker, write_config
from tests.distributed.test_worker import produce, wait_for_records

pytestmark = pytest.mark.integration


def test_frames_scored_on_triton_become_records_exactly_once(
    tmp_path: Path, broker: str, model_dir: Path, triton: LocalTriton
) -> None:
    # the worker loads no model (Triton holds it): the model folder the config names need not exist
    missing = {"housing-A": str(tmp_path / "not-here")}
    config = write_config(tmp_path, broker, model_dir, inference=triton.grpc_url, models=missing)
    ids = produce(load_settings(config), 10)
    worker = Worker(config)
    try:
        records = wait_for_records(tmp_path / "records.db", 10, worker)
        time.sleep(2)
        stored = records.query_inspections()
        assert sorted(r.frame_id for r in stored) == sorted(ids)
        assert all(r.process.status == "ok" and r.process.params for r in stored)
        assert all(r.heatmap is not None for r in stored)
        assert "NG" in {r.verdict for r in stored}
        assert records.list_dead_letters() == []
        records.close()
    finally:
        worker.stop()


def test_triton_killed_and_started_again_mid_stream_loses_and_duplicates_nothing(
    tmp_path: Path, broker: str, model_dir: Path, triton_repo: Path
) -> None:
    """SIGKILL tritonserver once the first frames are stored, then publish the rest: the worker's
    batches wait (retries, the circuit breaker, then the worker's own wait) until it is back: every
    frame once, no dead letter."""
    server = LocalTriton(triton_repo, tmp_path / "tritonserver.log").start()
    try:
        url = server.grpc_url + "?retries=1&breaker_failures=2&breaker_reset_s=1"
        config = write_config(tmp_path, broker, model_dir, inference=url)
        settings = load_settings(config)
        ids = produce(settings, 10)
        worker = Worker(config)
        try:
            wait_for_records(tmp_path / "records.db", 10, worker).close()
            server.kill()
            ids += produce(
                settings, 20, process=False, first=10
            )  # they reach the worker while Triton is down
            time.sleep(3)  # the worker meets the dead server
            server.start()
            records = wait_for_records(tmp_path / "records.db", 30, worker, timeout_s=120)
            time.sleep(2)
            stored = records.query_inspections(InspectionQuery(limit=1000))
            assert sorted(r.frame_id for r in stored) == sorted(ids)  # none lost, none twice
            assert records.list_dead_letters() == []
            records.close()
            assert "inference unavailable" in worker.output()  # it did meet the dead server
        finally:
            worker.stop()
    finally:
        server.stop()
