"""Killing the line mid-run and starting it again loses no record and duplicates none."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from services.cli import main
from services.ingest.synthetic import SyntheticLine
from services.ingest.synthetic_source import captured_part
from services.storage.sqlite_record_store import SqliteRecordStore

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PARTS = 40


def write_config(tmp_path: Path, model_dir: Path) -> Path:
    config = {
        "frame_sources": [f"synthetic://?seed=4&parts={PARTS}"],
        "process_sources": ["simulator://?seed=4"],
        "models": {"housing-A": str(model_dir)},
        "stores": {"records": f"sqlite:///{tmp_path / 'records.db'}", "blobs": (tmp_path / "blobs").as_uri()},
        "batching": {"max_batch": 4, "queue_size": 4},
    }
    path = tmp_path / "linewatch.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def stored_ids(db: Path) -> list[str]:
    with sqlite3.connect(db) as connection:
        return [row[0] for row in connection.execute("SELECT frame_id FROM inspections")]


def stored_so_far(db: Path) -> int:
    """Records stored while the line runs; the line may have made the file but not its tables yet."""
    if not db.exists():
        return 0
    with sqlite3.connect(db) as connection:
        tables = connection.execute("SELECT name FROM sqlite_master WHERE name = 'inspections'").fetchall()
        return connection.execute("SELECT COUNT(*) FROM inspections").fetchone()[0] if tables else 0


def start_line(config: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "services.cli", "run", "--config", str(config)]
    pipe = subprocess.PIPE
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=pipe, stderr=pipe, text=True)


def wait_for_records(process: subprocess.Popen[str], db: Path, at_least: int) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and process.poll() is None:
        if stored_so_far(db) >= at_least:
            return
        time.sleep(0.2)
    process.kill()
    raise AssertionError(f"no {at_least} records before the line ended: {process.communicate()}")


def kill_after_some_records(config: Path, db: Path, at_least: int) -> list[str]:
    process = start_line(config)
    try:
        wait_for_records(process, db, at_least)
        process.send_signal(signal.SIGKILL)
    finally:
        process.communicate(timeout=30)
    return stored_ids(db)


def test_ctrl_c_drains_the_frames_already_read(tmp_path: Path, model_dir: Path) -> None:
    config, db = write_config(tmp_path, model_dir), tmp_path / "records.db"
    process = start_line(config)
    wait_for_records(process, db, at_least=4)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    match = re.search(r"frames +(\d+) in, (\d+) inspected, 0 dead-lettered", out)
    assert match is not None, out
    frames_in, inspected = int(match[1]), int(match[2])
    assert frames_in == inspected == len(stored_ids(db)) < PARTS
    assert "stopped       interrupted" in out


def test_a_killed_line_run_again_stores_every_frame_exactly_once(
    tmp_path: Path, model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config, db = write_config(tmp_path, model_dir), tmp_path / "records.db"
    before_kill = kill_after_some_records(config, db, at_least=8)
    assert 8 <= len(before_kill) < PARTS

    with SqliteRecordStore(db) as store:
        kept = {frame_id: store.get_inspection(frame_id) for frame_id in before_kill}
    assert main(["run", "--config", str(config)]) == 0
    assert f"{PARTS} in, {PARTS} inspected" in capsys.readouterr().out

    expected = {captured_part(part, 4).frame_id for part in SyntheticLine(seed=4).parts(PARTS)}
    after = stored_ids(db)
    assert len(after) == len(set(after)) == PARTS
    assert set(after) == expected
    with sqlite3.connect(db) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    with SqliteRecordStore(db) as store:
        for frame_id, record in kept.items():
            again = store.get_inspection(frame_id)
            assert again is not None and record is not None
            assert (again.verdict, again.captured_at, again.part_id) == (
                record.verdict,
                record.captured_at,
                record.part_id,
            )

    assert main(["run", "--config", str(config), "--resume"]) == 0  # resuming skips what is stored
    assert f"{PARTS} in, 0 inspected, 0 dead-lettered, {PARTS} already stored" in capsys.readouterr().out
