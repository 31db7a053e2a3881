"""HTML inspection reports: one inspection with its telling parameters, a period with its ranking;
over the API and from the command line."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from schemas.inspection import Inspection
from services.cli import main
from services.ingest.synthetic_records import synthetic_inspections
from services.storage.sqlite_record_store import SqliteRecordStore
from services.storage.tiered_blob_store import TieredBlobStore
from tests.api.factories import make_inspection

AT = datetime(2025, 1, 6, 7, 0, tzinfo=UTC)  # after the synthetic line's first 3,000 frames
COLD = {
    "mould_temp_c": 50.0,  # in the risky range (< 56) of the ranking over those frames
    "injection_speed_mm_s": 79.0,
    "hold_pressure_bar": 600.0,
    "cycle_time_s": 24.0,
    "return_water_temp_c": 30.0,
}


@pytest.fixture
def cold_part(records: SqliteRecordStore, blobs: TieredBlobStore) -> Inspection:
    records.upsert_inspections(list(synthetic_inspections(3_000, seed=1)))
    part = make_inspection(blobs, at=AT, line_id="line-1", verdict="NG", locations=("center",), params=COLD)
    records.upsert_inspection(part)
    return part


def test_one_inspections_report(client: TestClient, cold_part: Inspection) -> None:
    response = client.get(f"/v1/inspections/{cold_part.frame_id}/report.html")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    page = response.text
    assert page.count("data:image/png;base64,") == 1  # the overlay, inlined
    assert "<b>mould_temp_c 50</b> — in the range &lt; 56" in page
    assert "<b>return_water_temp_c 30</b>" in page and "explained by mould_temp_c" in page
    assert "hold_pressure_bar 600" not in page  # not in its risky range (≥ 640)
    assert client.get("/v1/inspections/01956039-694b-7c2e-9a41-5d3e2b7f8c10/report.html").status_code == 404


def test_a_periods_report(client: TestClient, cold_part: Inspection) -> None:
    response = client.get("/v1/reports/inspections.html", params={"limit": 5, "line_id": "line-1"})
    assert response.status_code == 200
    page = response.text
    assert "3001 frames" in page and "What goes with NG parts" in page
    assert "hold_pressure_bar" in page and "explained by mould_temp_c" in page
    assert page.count("<section>") == 5
    assert client.get("/v1/reports/inspections.html", params={"from": "yesterday"}).status_code == 422


def test_report_command(records: SqliteRecordStore, cold_part: Inspection, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'records.db'}"
    blobs = (tmp_path / "blobs").as_uri()
    out = tmp_path / "report.html"
    argv = ["report", "--records", url, "--blobs", blobs]
    assert main([*argv, "--frame", cold_part.frame_id, "--out", str(out)]) == 0
    assert "<b>mould_temp_c 50</b>" in out.read_text()
    assert main([*argv, "--to", "2025-01-06T06:10:00Z", "--max", "3", "--out", str(out)]) == 0
    assert out.read_text().count("<section>") == 3
    assert main([*argv, "--frame", "nope", "--out", str(out)]) == 2
