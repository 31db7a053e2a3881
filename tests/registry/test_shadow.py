"""Shadow evaluation on real stores: a candidate scores the frames the line inspected; its verdicts
are kept beside its registry entry and the stored records never change."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from schemas.label import Review
from services.cli import main
from services.inference.local import LocalInference
from services.ingest.synthetic import render_part
from services.registry.files import FileModelRegistry
from services.review.autolabel import label_of
from services.storage.query import InspectionQuery
from services.storage.sqlite_label_store import SqliteLabelStore
from services.storage.sqlite_record_store import SqliteRecordStore
from services.storage.tiered_blob_store import TieredBlobStore
from services.stream.runtime import Line, LineOptions
from services.vision.artifact import read_card, write_card
from services.vision.inspector import Inspector
from tests.storage.factories import T0
from tests.stream.fakes import ListSource, captured

pytestmark = pytest.mark.integration  # the command line end to end, on real stores


def test_shadow_scores_never_change_the_records(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    registry = FileModelRegistry(tmp_path / "registry")
    production = registry.register(model_dir, "housing-A", "ops")
    registry.promote("housing-A", production.version, "ops")
    eager = tmp_path / "eager"  # the same detector with its NG threshold at a third: more NG
    shutil.copytree(model_dir, eager)
    card = read_card(eager)
    lower = card.image_calibration.model_copy(update={"threshold": card.image_calibration.threshold / 3})
    write_card(card.model_copy(update={"version": "eager-1", "image_calibration": lower}), eager)
    registry.register(eager, "housing-A", "ops")
    registry.set_shadow("housing-A", "eager-1", "ops")

    rng = np.random.default_rng(3)
    frames = [captured(i, image=render_part(rng, ["sink_mark"] if i % 4 == 0 else [])[0]) for i in range(24)]
    records = SqliteRecordStore(tmp_path / "records.db")
    blobs = TieredBlobStore.at(tmp_path / "blobs")
    inspector = Inspector.load(registry.model_dir("housing-A", production.version))
    line = Line(
        [ListSource(frames)], [], LocalInference({"housing-A": inspector}), records, blobs, LineOptions()
    )
    asyncio.run(line.run())
    before = [i.model_dump() for i in records.query_inspections(InspectionQuery(limit=1000))]
    assert len(before) == 24
    with SqliteLabelStore(tmp_path / "labels.db") as labels:
        stored = records.query_inspections(InspectionQuery(limit=1000))
        for inspection in stored[:3]:
            labels.add_labels([label_of(inspection, None, T0, 1.0, ("test",))])
            labels.review(inspection.frame_id, Review(decision="good", reviewer="qa", reviewed_at=T0))
    records.close()
    blobs.close()
    urls = {
        "registry": (tmp_path / "registry").as_uri(),
        "records": f"sqlite:///{tmp_path}/records.db",
        "blobs": (tmp_path / "blobs").as_uri(),
        "labels": f"sqlite:///{tmp_path}/labels.db",
    }
    stores = [arg for name, url in urls.items() for arg in (f"--{name}", url)]
    assert main(["models", "compare", "--recipe", "housing-A", *stores, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["candidate"] == "eager-1" and report["frames"] == 24 and report["skipped"] == 0
    assert sum(n for row in report["table"].values() for n in row.values()) == 24
    production_ng = sum(report["table"].get("NG", {}).values())
    candidate_ng = sum(row.get("NG", 0) for row in report["table"].values())
    assert candidate_ng >= production_ng and report["agreement"] < 1  # a third of the threshold: more NG
    assert report["candidate_scores"]["q50"] > report["production_scores"]["q50"]
    assert report["reviewed"] == 3
    assert report["outcomes"]["production"]["reviewed_good"] == 3
    saved = list((tmp_path / "registry" / "housing-A" / "eager-1").glob("shadow-*.json"))
    assert len(saved) == 1 and len(json.loads(saved[0].read_text())["verdicts"]) == 24
    with SqliteRecordStore(tmp_path / "records.db") as again:
        after = [i.model_dump() for i in again.query_inspections(InspectionQuery(limit=1000))]
    assert after == before  # shadow mode never changes a stored verdict
    assert main(["models", "compare", "--recipe", "housing-A", "--version", "nope", *stores]) == 2


def test_a_live_shadow_scores_beside_production_and_changes_nothing(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The line follows the registry's shadow stage: the candidate scores every batch beside
    production, its verdicts go to the registry folder, the records are production's alone."""
    from services.inference.swap import SwappablePort
    from services.registry.follow import RegistryFollower, production_inspectors
    from services.registry.live_shadow import LiveShadow

    registry = FileModelRegistry(tmp_path / "registry")
    production = registry.register(model_dir, "housing-A", "ops")
    registry.promote("housing-A", production.version, "ops")
    eager = tmp_path / "eager"
    shutil.copytree(model_dir, eager)
    card = read_card(eager)
    lower = card.image_calibration.model_copy(update={"threshold": card.image_calibration.threshold / 3})
    write_card(card.model_copy(update={"version": "eager-1", "image_calibration": lower}), eager)
    registry.register(eager, "housing-A", "ops")
    registry.set_shadow("housing-A", "eager-1", "ops")

    inspectors = production_inspectors(registry)
    port = SwappablePort(LocalInference(inspectors))
    shadow = LiveShadow(max_in_flight=64)  # (a test: score every batch; a line skips when it falls behind)
    follower = RegistryFollower(registry, port, inspectors, lambda m: LocalInference(m), 60, shadow)
    rng = np.random.default_rng(4)
    frames = [captured(i, image=render_part(rng, ["sink_mark"] if i % 4 == 0 else [])[0]) for i in range(24)]
    records = SqliteRecordStore(tmp_path / "records.db")
    blobs = TieredBlobStore.at(tmp_path / "blobs")

    async def scenario() -> None:
        await follower.check()  # the shadow starts before the first frame
        line = Line([ListSource(frames)], [], port, records, blobs, LineOptions(), shadow=shadow)
        await line.run()

    asyncio.run(scenario())
    stored = records.query_inspections(InspectionQuery(limit=1000))
    assert len(stored) == 24 and {s.model_version for s in stored} == {production.version}
    assert shadow.scored == 24 and shadow.skipped == 0 and shadow.failed == 0
    lines = (tmp_path / "registry" / "housing-A" / "eager-1" / "shadow-live.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    by_frame = {s.frame_id: s for s in stored}
    assert {r["frame_id"] for r in rows} == set(by_frame)
    assert all(r["production_verdict"] == by_frame[r["frame_id"]].verdict for r in rows)
    assert sum(r["candidate_verdict"] == "NG" for r in rows) >= sum(s.verdict == "NG" for s in stored)
    records.close()
    blobs.close()
    url = (tmp_path / "registry").as_uri()
    labels = ["--labels", f"sqlite:///{tmp_path}/labels.db"]
    assert (
        main(["models", "compare", "--registry", url, "--recipe", "housing-A", "--live", *labels, "--json"])
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert report["frames"] == 24 and report["candidate"] == "eager-1"
