"""``linewatch serve``: the key-hashing helper and the wiring up to uvicorn (not started here)."""

import io
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient

from services.api.settings import hash_key
from services.cli import main


def test_hash_key_prints_the_hash(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--hash-key", "line-2-aoi"]) == 0
    assert capsys.readouterr().out == hash_key("line-2-aoi") + "\n"


def test_hash_key_reads_the_key_from_stdin(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("line-2-aoi\n"))
    assert main(["serve", "--hash-key", "-"]) == 0
    assert capsys.readouterr().out == hash_key("line-2-aoi") + "\n"


def test_serve_refuses_to_start_without_keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["serve", "--records", f"sqlite:///{tmp_path}/r.db", "--blobs", f"file://{tmp_path}/blobs"])
    assert code == 2
    assert "LINEWATCH_API_KEYS" in capsys.readouterr().err


def test_serve_names_an_unsupported_blob_store_url(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["serve", "--records", f"sqlite:///{tmp_path}/r.db", "--blobs", "gs://bucket/blobs"])
    assert code == 2
    assert "unsupported blob store URL 'gs://bucket/blobs'" in capsys.readouterr().err


def test_serve_runs_the_app_on_the_stores_with_uvicorn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LINEWATCH_API_KEYS", "k1")
    monkeypatch.setenv("LINEWATCH_API_PORT", "9000")
    served: dict[str, Any] = {}

    def fake_run(app: FastAPI, host: str, port: int, **options: Any) -> None:
        served.update(host=host, port=port)
        served["alerts"] = TestClient(app).get("/v1/alerts", headers={"X-API-Key": "k1"}).status_code

    monkeypatch.setattr(uvicorn, "run", fake_run)
    args = [
        "serve",
        "--records",
        f"sqlite:///{tmp_path}/r.db",
        "--blobs",
        f"file://{tmp_path}/b",
        "--host",
        "0.0.0.0",
    ]
    assert main(args) == 0
    assert served == {"host": "0.0.0.0", "port": 9000, "alerts": 200}
    assert (tmp_path / "r.db").is_file()


def test_serve_keeps_its_labels_beside_a_sqlite_record_store() -> None:
    from services.commands.serve import labels_beside

    assert labels_beside("sqlite:///runs/demo/records.db") == "sqlite:///runs/demo/labels.db"
    assert (
        labels_beside("sqlite:////var/lib/linewatch/records.db") == "sqlite:////var/lib/linewatch/labels.db"
    )
    assert labels_beside("sqlite:///:memory:") is None
    assert labels_beside("https://es:9200/linewatch") is None
