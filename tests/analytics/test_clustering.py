"""Defect clustering on rendered synthetic parts: planted kinds recovered, a new kind flagged novel,
ids stable across runs and written back to every record store."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from schemas.inspection import Inspection
from services.analytics.cluster_report import write_cluster_report
from services.analytics.clustering import (
    ClusterSettings,
    PeriodicClustering,
    assign_ids,
    cluster_defects,
)
from services.ingest.synthetic import render_part
from services.steps.finish import to_defect
from services.storage.elasticsearch_record_store import ElasticsearchRecordStore
from services.storage.file_blob_store import FileBlobStore
from services.storage.ports import RecordStore
from services.storage.sqlite_record_store import SqliteRecordStore
from services.vision.inspector import Inspector
from services.vision.overlay import encode_png
from tests.storage.factories import make_inspection

KNOWN = ("sink_mark", "crack", "contamination")
NEW = "flash"
SETTINGS = ClusterSettings(min_cluster_size=10)


def inspect_parts(
    inspector: Inspector, kinds: Sequence[str], seed: int, start_s: float, blobs: FileBlobStore | None = None
) -> tuple[list[Inspection], dict[tuple[str, int], str]]:
    """Render one part per kind in ``kinds``, inspect them, and make their records; the planted kind
    of every defect found on the planted defect (its centre inside the planted box) of an NG frame
    (clustering reads the NG frames)."""
    rng = np.random.default_rng(seed)
    rendered = [render_part(rng, [kind], 256) for kind in kinds]
    predictions = inspector.predict([image for image, _, _ in rendered])
    records: list[Inspection] = []
    truth: dict[tuple[str, int], str] = {}
    for k, ((image, _, planted), prediction) in enumerate(zip(rendered, predictions, strict=True)):
        base = make_inspection(at_s=start_s + k, verdict="NG" if prediction.verdict == "NG" else "OK")
        update: dict[str, object] = {"defects": [to_defect(region) for region in prediction.defects]}
        if blobs is not None:
            update["image"] = blobs.put(encode_png(image), "png", 256, 256)
        record = base.model_copy(update=update)
        x, y, w, h = planted[0].bbox
        for index, defect in enumerate(record.defects):
            if (
                record.verdict == "NG"
                and x - 4 <= defect.centroid.x <= x + w + 4
                and y - 4 <= defect.centroid.y <= y + h + 4
            ):
                truth[(record.frame_id, index)] = planted[0].kind
        records.append(record)
    return records, truth


def labelled(store: RecordStore, truth: dict[tuple[str, int], str]) -> tuple[list[str], list[int]]:
    kinds: list[str] = []
    ids: list[int] = []
    for (frame_id, index), kind in truth.items():
        record = store.get_inspection(frame_id)
        assert record is not None
        kinds.append(kind)
        cluster_id = record.defects[index].cluster_id
        ids.append(-1 if cluster_id is None else cluster_id)
    return kinds, ids


@pytest.fixture(scope="module")
def inspector(
    synthetic_data: Path, mobilenet_weights: Path, tmp_path_factory: pytest.TempPathFactory
) -> Inspector:
    """PatchCore on the synthetic parts without the per-position score (position weight 0): the
    defect embeddings are what is clustered here, and they should not move with the weight that the
    automatic choice (on painted defects) happens to pick for these parts."""
    from services.vision.train import TrainConfig, train

    out = tmp_path_factory.mktemp("clustering-model")
    config = TrainConfig(
        data_root=synthetic_data,
        category="synthetic",
        out_dir=out,
        weights=mobilenet_weights,
        activation="relu",
        position_weight=0.0,
        progress=False,
    )
    train(config)
    return Inspector.load(out)


@pytest.fixture(scope="module")
def phases(inspector: Inspector) -> tuple[list[Inspection], dict, list[Inspection], dict]:
    first, truth1 = inspect_parts(inspector, [KNOWN[k % 3] for k in range(150)], seed=5, start_s=0)
    kinds2 = [(*KNOWN, NEW)[k % 4] for k in range(160)]
    second, truth2 = inspect_parts(inspector, kinds2, seed=6, start_s=1000)
    return first, truth1, second, truth2


def test_defects_carry_unit_embeddings(phases: tuple) -> None:
    first, truth1, _, _ = phases
    embedded = [d.embedding for r in first for d in r.defects]
    assert len(truth1) >= 130  # nearly every planted defect is found, on an NG frame
    assert embedded and all(len(e) == 128 for e in embedded)
    assert np.allclose(np.linalg.norm(np.asarray(embedded), axis=1), 1.0, atol=1e-3)


def test_planted_kinds_recovered_then_a_new_kind_is_novel(phases: tuple, tmp_path: Path) -> None:
    first, truth1, second, truth2 = phases
    with SqliteRecordStore(tmp_path / "records.db") as store:
        store.upsert_inspections(first)
        run1 = cluster_defects(store, SETTINGS)
        kinds, ids = labelled(store, truth1)
        assert adjusted_rand_score(kinds, ids) >= 0.8, run1.as_json()
        assert run1.reducer == "umap"
        assert not run1.novel and not store.list_alerts()  # the first run is the baseline
        before = {key: cid for key, cid in zip(truth1, ids, strict=True)}

        store.upsert_inspections(second)
        run2 = cluster_defects(store, SETTINGS)
        kinds2, ids2 = labelled(store, truth2)
        assert adjusted_rand_score(kinds2, ids2) >= 0.8, run2.as_json()
        # the first phase's defects keep their ids
        _, again = labelled(store, truth1)
        kept = sum(a == b for a, b in zip(before.values(), again, strict=True))
        assert kept >= 0.95 * len(again)
        # the new kind is one novel cluster, and nothing else is novel
        assert len(run2.novel) == 1, run2.as_json()
        novel_id = run2.novel[0].cluster_id
        flash_ids = [cid for kind, cid in zip(kinds2, ids2, strict=True) if kind == NEW]
        assert flash_ids.count(novel_id) >= 0.8 * len(flash_ids), (str(flash_ids), str(run2.as_json()))
        assert novel_id not in set(again)
        (alert,) = store.list_alerts()
        assert alert.kind == "novel_defect_cluster" and f"cluster {novel_id}" in alert.message

        run3 = cluster_defects(store, SETTINGS)  # nothing new: nothing changes, nothing is novel
        assert not run3.novel and run3.changed_records <= 0.05 * len(first + second)


def test_cluster_report_shows_examples(inspector: Inspector, tmp_path: Path) -> None:
    blobs = FileBlobStore(tmp_path / "blobs")
    records, _ = inspect_parts(inspector, [KNOWN[k % 3] for k in range(60)], 8, 0, blobs)
    with SqliteRecordStore(":memory:") as store:
        store.upsert_inspections(records)
        run = cluster_defects(store, ClusterSettings(reducer="pca", min_cluster_size=5))
        page = write_cluster_report(run, store, blobs, tmp_path / "report")
    html = page.read_text()
    assert run.clusters
    for summary in run.clusters:
        assert f"Cluster {summary.cluster_id}" in html
    assert html.count("data:image/png;base64,") >= len(run.clusters)


def test_ids_follow_the_majority_and_known_centroids() -> None:
    rng = np.random.default_rng(0)
    a, b, c = (np.eye(8)[k] for k in range(3))

    def near(centre: np.ndarray, n: int) -> np.ndarray:
        v = centre + 0.05 * rng.standard_normal((n, 8))
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    embeddings = np.vstack([near(a, 20), near(b, 20), near(a, 10), near(c, 10)])
    labels = np.array([0] * 20 + [1] * 20 + [2] * 10 + [3] * 10)
    previous: list[int | None] = [7] * 20 + [3] * 20 + [None] * 20
    result = assign_ids(embeddings, labels, previous, match_distance=0.2)
    assert result.ids[:20] == [7] * 20 and result.ids[20:40] == [3] * 20
    assert result.ids[40:50] == [7] * 10  # no ids yet, but close to cluster 7
    assert result.ids[50:] == [8] * 10 and set(result.novel) == {8}
    nearest, distance = result.novel[8]
    assert nearest in (3, 7) and distance is not None and distance > 0.5
    baseline = assign_ids(embeddings, labels, [None] * 60, match_distance=0.2)
    assert not baseline.novel and len(set(baseline.ids)) == 4


def embedded_record(at_s: float, vector: np.ndarray) -> Inspection:
    record = make_inspection(at_s=at_s, verdict="NG", locations=("center",))
    defect = record.defects[0].model_copy(update={"embedding": [float(v) for v in vector]})
    return record.model_copy(update={"defects": [defect]})


def blob_records(n_per: int = 20) -> list[Inspection]:
    rng = np.random.default_rng(1)
    out = []
    for kind in range(2):
        for k in range(n_per):
            v = np.eye(16)[kind] + 0.05 * rng.standard_normal(16)
            out.append(embedded_record(kind * 100 + k, v / np.linalg.norm(v)))
    return out


@pytest.mark.integration
def test_ids_written_back_to_elasticsearch(es_url: str) -> None:
    """The defects' embeddings indexed as vectors (embedding_dims; knn_vector on the OpenSearch-API
    test server), the ids written back by upsert."""
    with ElasticsearchRecordStore(f"{es_url}&embedding_dims=16") as store:
        records = blob_records()
        store.upsert_inspections(records)
        run = cluster_defects(store, ClusterSettings(reducer="pca", min_cluster_size=5))
        assert len(run.clusters) == 2 and run.changed_records == len(records)
        ids = [store.get_inspection(r.frame_id).defects[0].cluster_id for r in records]  # type: ignore[union-attr]
        assert len(set(ids[:20])) == 1 and len(set(ids[20:])) == 1 and ids[0] != ids[20]
        assert store.count_inspections(store_query(ids[0])) == 20


def store_query(cluster_id: int | None):  # type: ignore[no-untyped-def]
    from services.storage.query import InspectionQuery

    return InspectionQuery(cluster_id=cluster_id)


def test_dry_run_writes_nothing() -> None:
    with SqliteRecordStore(":memory:") as store:
        records = blob_records()
        store.upsert_inspections(records)
        run = cluster_defects(store, ClusterSettings(reducer="pca", min_cluster_size=5), write=False)
        assert len(run.clusters) == 2
        assert all(d.cluster_id is None for r in store.query_inspections() for d in r.defects)


def test_periodic_runs_wait_for_time_and_new_defects() -> None:
    with SqliteRecordStore(":memory:") as store:
        records = blob_records()
        store.upsert_inspections(records)
        settings = ClusterSettings(reducer="pca", min_cluster_size=5, every_s=0.01, min_new_defects=30)
        periodic = PeriodicClustering(store, settings)
        periodic.count(records[:20])
        assert not periodic.poll()  # 20 new defects: not enough
        periodic.count(records[20:])
        time.sleep(0.05)  # every_s passes
        assert periodic.poll()
        periodic.wait(60)
        assert len(periodic.runs) == 1 and len(periodic.runs[0].clusters) == 2
        assert not periodic.poll()  # the count starts again
        assert store.count_inspections(store_query(periodic.runs[0].clusters[0].cluster_id)) == 20


def test_no_defects_is_an_empty_run() -> None:
    with SqliteRecordStore(":memory:") as store:
        store.upsert_inspections([make_inspection(verdict="OK")])
        run = cluster_defects(store)
        assert run.defects == 0 and not run.clusters


def test_other_embedding_sizes_are_left_alone() -> None:
    records = blob_records()
    odd = embedded_record(500, np.ones(4) / 2)
    with SqliteRecordStore(":memory:") as store:
        store.upsert_inspections([*records, odd])
        run = cluster_defects(store, ClusterSettings(reducer="pca", min_cluster_size=5))
        assert run.defects == len(records)
        stored = store.get_inspection(odd.frame_id)
        assert stored is not None and stored.defects[0].cluster_id is None


def test_time_filters_limit_the_run() -> None:
    from services.storage.query import InspectionQuery

    records = blob_records()
    with SqliteRecordStore(":memory:") as store:
        store.upsert_inspections(records)
        later = records[20].captured_at - timedelta(seconds=1)
        run = cluster_defects(
            store, ClusterSettings(reducer="pca", min_cluster_size=5), InspectionQuery(captured_from=later)
        )
        assert run.defects == 20


def test_cluster_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from services.cli import main

    path = tmp_path / "records.db"
    with SqliteRecordStore(path) as store:
        store.upsert_inspections(blob_records())
    url = f"sqlite:///{path}"
    common = ["cluster", "--records", url, "--reducer", "pca", "--min-cluster-size", "5"]
    assert main([*common, "--dry-run", "--json"]) == 0
    dry = json.loads(capsys.readouterr().out)
    assert dry["defects"] == 40 and len(dry["clusters"]) == 2
    assert main([*common, "--report", str(tmp_path / "report")]) == 0
    out = capsys.readouterr().out
    assert "40 defects: 2 clusters (0 novel)" in out and "changed the cluster ids of 40 records" in out
    assert "Cluster 0" in (tmp_path / "report" / "index.html").read_text()
    with SqliteRecordStore(path) as store:
        assert store.count_inspections(store_query(0)) == 20
    assert main(["cluster", "--records", url, "--verdict", "OK"]) == 2
    assert "reads the defects of NG frames" in capsys.readouterr().err
    assert main(["cluster", "--records", url, "--match-distance", "5"]) == 2
    assert "match_distance" in capsys.readouterr().err


def test_the_leaders_run_counts_new_ng_frames_in_the_store() -> None:
    with SqliteRecordStore(":memory:") as store:
        records = blob_records()
        store.upsert_inspections(records[:20])
        periodic = PeriodicClustering(
            store, ClusterSettings(reducer="pca", min_cluster_size=5, min_new_defects=30)
        )
        assert periodic.run_if_new() is None  # 20 NG frames: not enough
        store.upsert_inspections(records[20:])
        run = periodic.run_if_new()
        assert run is not None and len(run.clusters) == 2
        assert periodic.run_if_new() is None  # nothing captured since
