"""``linewatch review`` end to end on real stores: stored inspections (SQLite records, heat maps in the
file blob store) are auto-labelled and queued, listed, decided and shown with their history."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from services.cli import main
from services.review.autolabel import decode_png
from services.steps.finish import store_heatmap
from services.storage.label_query import LabelQuery
from services.storage.stores import open_blob_store, open_label_store, open_record_store
from tests.storage.factories import make_inspection

pytestmark = pytest.mark.integration  # the command line end to end, on real stores


@pytest.fixture
def plant(tmp_path: Path) -> dict[str, str]:
    urls = {
        "records": f"sqlite:///{tmp_path}/records.db",
        "blobs": (tmp_path / "blobs").as_uri(),
        "labels": f"sqlite:///{tmp_path}/labels.db",
    }
    records, blobs = open_record_store(urls["records"]), open_blob_store(urls["blobs"])
    hot = np.zeros((48, 64), np.uint8)
    hot[10:20, 10:30] = 220
    for i, (verdict, score) in enumerate(
        [("OK", 0.1), ("OK", 0.46), ("REVIEW", 0.44), ("NG", 0.9), ("NG", 0.52)]
    ):
        inspection = make_inspection(at_s=i, verdict=verdict)  # type: ignore[arg-type]
        heatmap = store_heatmap(blobs, hot if verdict != "OK" else np.zeros_like(hot))
        records.upsert_inspection(inspection.model_copy(update={"score": score, "heatmap": heatmap}))
    records.close()
    blobs.close()
    return urls


def stores(urls: dict[str, str], *names: str) -> list[str]:
    return [arg for name in names for arg in (f"--{name}", urls[name])]


def test_sync_list_decide_show(
    plant: dict[str, str], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    window = ["--from", "2025-03-04T00:00:00Z", "--to", "2025-03-05T00:00:00Z"]
    assert main(["review", "sync", *stores(plant, "records", "blobs", "labels"), *window]) == 0
    out = capsys.readouterr().out
    assert "5 inspections" in out and "4 labelled, 3 queued for review" in out
    assert main(["review", "sync", *stores(plant, "records", "blobs", "labels"), *window]) == 0
    assert "0 labelled, 0 queued for review, 4 labelled before" in capsys.readouterr().out

    assert main(["review", "list", *stores(plant, "labels"), "--json"]) == 0
    queue = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(q["verdict"], q["score"]) for q in queue] == [("REVIEW", 0.44), ("NG", 0.52), ("OK", 0.46)]
    assert all(q["mask"] is not None for q in queue if q["verdict"] != "OK")
    assert queue[2]["mask"] is None  # the OK frame's heat map is cold

    first = queue[0]["frame_id"]
    mask = np.zeros((48, 64), np.uint8)
    mask[12:18, 12:20] = 255
    cv2.imwrite(str(tmp_path / "mask.png"), mask)
    decide = ["review", "decide", first, *stores(plant, "labels", "blobs"), "--reviewer", "m.keller"]
    assert (
        main([*decide, "--decision", "defect", "--class", "crack", "--mask", str(tmp_path / "mask.png")]) == 0
    )
    assert "defect (revision 1)" in capsys.readouterr().out
    assert main([*decide, "--decision", "good", "--revision", "0"]) == 2
    assert "revision 1, not 0" in capsys.readouterr().err
    assert main([*decide, "--decision", "good", "--class", "crack"]) == 2
    assert "no defect class or mask" in capsys.readouterr().err
    assert main([*decide[:2], "0190a000-0000-7000-8000-000000000000", *decide[3:], "--decision", "good"]) == 2
    assert "has no label" in capsys.readouterr().err

    assert main(["review", "show", first, *stores(plant, "labels")]) == 0
    shown = capsys.readouterr().out
    assert "reviewed: defect, class crack" in shown and "m.keller" in shown and "queued" in shown
    labels = open_label_store(plant["labels"])
    reviewed = labels.get_label(first)
    assert reviewed is not None and reviewed.review is not None and reviewed.review.mask is not None
    blobs = open_blob_store(plant["blobs"])
    assert np.array_equal(decode_png(blobs.get(reviewed.review.mask.uri)), mask)
    assert labels.count_labels(LabelQuery(status="queued")) == 2
    blobs.close()
    labels.close()
    assert main(["review", "list", *stores(plant, "labels")]) == 0
    assert "2 labels queued:" in capsys.readouterr().out
