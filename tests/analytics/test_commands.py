"""``linewatch query`` and ``linewatch causes`` on a SQLite store of the synthetic line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.cli import main
from services.ingest.synthetic_records import synthetic_inspections
from services.storage.sqlite_record_store import SqliteRecordStore


@pytest.fixture(scope="module")
def records_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("analytics") / "records.db"
    with SqliteRecordStore(path) as store:
        store.upsert_inspections(list(synthetic_inspections(12_000, seed=3)))
    return f"sqlite:///{path}"


def test_query_prints_a_table_and_json(records_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["query", "--records", records_url, "--by", "mould_temp_c:55,60", "--by", "severity"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["mould_temp_c", "severity", "frames", "ng", "ng_rate", "mean_score",
                                "mean_defect_area_px"]  # fmt: skip
    assert table[1].split()[:3] == ["<", "55", "critical"]
    assert main(["query", "--records", records_url, "--by", "location", "--verdict", "NG",
                 "--param", "mould_temp_c=..55", "--measure", "frames", "--json"]) == 0  # fmt: skip
    rows = json.loads(capsys.readouterr().out)
    assert {"defect_location", "frames"} == set(rows[0])
    center = next(row for row in rows if row["defect_location"] == "center")
    assert center["frames"] == max(row["frames"] for row in rows)  # sink marks sit in the centre
    assert main(["query", "--records", records_url, "--by", "time:1h", "--json"]) == 0
    hours = json.loads(capsys.readouterr().out)
    assert sum(row["frames"] for row in hours) == 12_000
    assert hours[0]["time"] == "2025-01-06T06:00:00Z"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["query", "--by", "colour"], "needs a bin width"),
        (["query", "--by", "speed:2"], "unknown process parameter 'speed'; recorded: cycle_time_s"),
        (["query", "--param", "mould_temp_c=hot..60"], "'hot' is not a number"),
        (["query", "--param", "mould_temp_c=60..50"], "min 60.0 is above max 50.0"),
        (["query", "--from", "yesterday"], "not an ISO 8601 time"),
        (["query", "--by", "mould_temp_c:60,55"], "strictly increasing"),
        (["query", "--by", "time:soon"], "expected time:SECONDS"),
        (["causes", "--outcome", "colour=red"], "expected FIELD=VALUE"),
        (["causes", "--param", "speed=1..2"], "unknown process parameter 'speed'"),
    ],
)
def test_a_bad_query_exits_2_and_says_why(
    records_url: str, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert main([*argv, "--records", records_url]) == 2
    assert message in capsys.readouterr().err


def test_causes_names_the_planted_causes(records_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["causes", "--records", records_url]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("NG rate: ")
    ranked = [line.split(" when ")[1].split()[0] for line in lines[1:4]]
    assert set(ranked) == {"mould_temp_c", "injection_speed_mm_s", "hold_pressure_bar"}
    assert main(["causes", "--records", records_url, "--outcome", "severity=critical", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["outcome"] == "rate of severity=critical"
    assert report["causes"][0]["param"] == "hold_pressure_bar" and report["causes"][0]["status"] == "cause"


def test_an_empty_store_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    assert main(["query", "--records", url]) == 0
    assert "no matching inspections" in capsys.readouterr().out
    assert main(["causes", "--records", url]) == 0
    assert "no matching inspections" in capsys.readouterr().out
