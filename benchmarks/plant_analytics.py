"""Plant analytics at scale: root-cause queries on a large SQLite store, defect clustering time and
memory, drift-alert delay and false alarms, Elasticsearch bulk indexing.

    .venv/bin/python benchmarks/plant_analytics.py causes --records 1000000   # about 10 minutes
    .venv/bin/python benchmarks/plant_analytics.py cluster --defects 10000
    .venv/bin/python benchmarks/plant_analytics.py drift --seeds 20
    .venv/bin/python benchmarks/plant_analytics.py es-bulk --records 20000 [--url http://HOST:9200]

``causes`` fills a SQLite file with the synthetic line's records (no pixels: services/ingest/
synthetic_records.py), then times ``linewatch causes`` (the ranking with its pairwise adjustment)
and two typical ``linewatch query`` groupings, each ``--repeats`` times: p50 and p99.
``cluster`` stores records whose defects carry embeddings drawn around five kinds' centres (in the
128 dimensions of the default PatchCore) and times one ``linewatch cluster`` run; peak memory is the
process's maximum RSS (UMAP's numba compilation included: it is measured in a fresh process).
``drift`` runs the drift monitors over stationary runs (the reference plus 5,000 frames) and runs
with a planted mould-cooling drift, per seed: alerts on the stationary runs (false alarms) and the
frames from the drift's start to each monitor's alert (delay). ``es-bulk`` indexes records into an
Elasticsearch-API server (by default a local osmem-server: an in-memory Python stand-in, so its rate
says nothing about a real cluster). Each prints a table and writes benchmarks/results/*.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from schemas.inspection import Inspection  # noqa: E402
from services.ingest.synthetic_records import synthetic_inspections  # noqa: E402
from services.storage.query import InspectionQuery  # noqa: E402
from services.storage.sqlite_record_store import SqliteRecordStore  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
CHUNK = 20_000


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def write(name: str, result: dict[str, Any]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"plant_analytics_{name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path.relative_to(ROOT)}")


def fill(store: SqliteRecordStore, n: int, seed: int) -> float:
    start = time.perf_counter()
    records = synthetic_inspections(n, seed=seed)
    with tqdm(total=n, desc="storing records", unit="record") as bar:
        batch: list[Inspection] = []
        for record in records:
            batch.append(record)
            if len(batch) == CHUNK:
                store.upsert_inspections(batch)
                bar.update(len(batch))
                batch = []
        if batch:
            store.upsert_inspections(batch)
            bar.update(len(batch))
    return time.perf_counter() - start


def bench_causes(args: argparse.Namespace) -> None:
    from services.analytics.run import run_causes, run_query
    from services.storage.analytics_query import AnalyticsQuery, GroupBy

    path = Path(args.db) if args.db else Path(tempfile.mkdtemp()) / "records.db"
    store = SqliteRecordStore(path)
    fill_s = fill(store, args.records, args.seed) if store.count_inspections() < args.records else 0.0
    n = store.count_inspections()
    queries = {
        "causes (NG)": lambda: run_causes(store, InspectionQuery()),
        "query by mould_temp_c:1 x severity": lambda: run_query(
            store,
            AnalyticsQuery(
                group_by=(GroupBy(field="param:mould_temp_c", width=1.0), GroupBy(field="severity"))
            ),
        ),
        "query by time:1h x camera (last day)": lambda: run_query(
            store,
            AnalyticsQuery(group_by=(GroupBy(field="time", interval_s=3600), GroupBy(field="camera_id"))),
        ),
    }
    rows = {}
    for name, call in queries.items():
        times = []
        for _ in tqdm(range(args.repeats), desc=name, unit="run"):
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
        rows[name] = {"p50_s": percentile(times, 50), "p99_s": percentile(times, 99), "runs": len(times)}
    store.close()
    print(f"\n{n:,} records in SQLite ({path.stat().st_size / 2**30:.2f} GiB; filled in {fill_s:.0f} s)")
    print(f"{'query':<40} {'p50 s':>8} {'p99 s':>8}")
    for name, row in rows.items():
        print(f"{name:<40} {row['p50_s']:>8.2f} {row['p99_s']:>8.2f}")
    write("causes", {"records": n, "db_gib": path.stat().st_size / 2**30, "fill_s": fill_s, "queries": rows})


def embedded_records(n: int, kinds: int, seed: int, dims: int = 128) -> tuple[list[Inspection], list[int]]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((kinds, dims))
    records, truth = [], []
    for k, record in enumerate(synthetic_inspections(n, seed=seed)):
        kind = k % kinds
        vector = centres[kind] + 0.35 * rng.standard_normal(dims) * np.linalg.norm(centres[kind]) / dims**0.5
        vector /= np.linalg.norm(vector)
        defect = {
            "bbox": {"x": 10, "y": 10, "width": 20, "height": 20},
            "area_px": 400,
            "area_share": 0.01,
            "max_score": 0.9,
            "mean_score": 0.7,
            "centroid": {"x": 20.0, "y": 20.0},
            "location": "center",
            "severity": "major",
            "embedding": [round(float(v), 4) for v in vector],
        }
        updated = record.model_validate(
            {**record.model_dump(), "verdict": "NG", "score": 0.8, "defects": [defect]}
        )
        records.append(updated)
        truth.append(kind)
    return records, truth


def bench_cluster(args: argparse.Namespace) -> None:
    from sklearn.metrics import adjusted_rand_score

    from services.analytics.clustering import ClusterSettings, cluster_defects

    records, truth = embedded_records(args.defects, args.kinds, args.seed)
    with SqliteRecordStore(":memory:") as store:
        store.upsert_inspections(records)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        settings = ClusterSettings(reducer=args.reducer, max_defects=args.defects)
        start = time.perf_counter()
        run = cluster_defects(store, settings, progress=True)
        first_s = time.perf_counter() - start
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        start = time.perf_counter()
        again = cluster_defects(store, settings)
        second_s = time.perf_counter() - start
        ids = [store.get_inspection(r.frame_id).defects[0].cluster_id for r in records]  # type: ignore[union-attr]
    ari = adjusted_rand_score(truth, [-1 if i is None else i for i in ids])
    result = {
        "defects": run.defects,
        "reducer": run.reducer,
        "first_run_s": first_s,
        "second_run_s": second_s,
        "peak_rss_mib": peak,
        "rss_before_mib": before,
        "clusters": len(run.clusters),
        "noise": run.noise,
        "ari_vs_planted": ari,
        "second_run_changed": again.changed_records,
    }
    print(f"\n{run.defects:,} defects, {args.kinds} planted kinds, reducer {run.reducer}")
    for key, value in result.items():
        print(f"  {key:<22} {value:.3f}" if isinstance(value, float) else f"  {key:<22} {value}")
    write(f"cluster_{run.reducer}", result)


def bench_drift(args: argparse.Namespace) -> None:
    from services.analytics.drift import DriftMonitor, DriftSettings

    reference = DriftSettings().reference_frames
    false_alarms: dict[int, list[str]] = {}
    delays: dict[str, list[int]] = {}
    missed: dict[int, list[str]] = {}
    expected = {"param_drift:mould_temp_c", "ng_rate", "score_drift"}
    for seed in tqdm(range(1, args.seeds + 1), desc="seeds", unit="seed"):
        alerts = DriftMonitor().observe_many(list(synthetic_inspections(reference + 5_000, seed=seed)))
        false_alarms[seed] = [str(a.details["monitor"]) for a in alerts]
        drifted = list(
            synthetic_inspections(
                6_000, seed=seed, drift="mould_cooling", drift_start_s=1_000, drift_duration_s=600
            )
        )
        found: dict[str, int] = {}
        for alert in DriftMonitor().observe_many(drifted):
            found.setdefault(
                str(alert.details["monitor"]), int(str(alert.details["frames_seen"])) - reference
            )
        for monitor, delay in found.items():
            delays.setdefault(monitor, []).append(delay)
        missed[seed] = sorted(expected - set(found))
    runs_alerting = sum(1 for v in false_alarms.values() if v)
    print(f"\nstationary runs (reference + 5,000 frames): {runs_alerting} of {args.seeds} raised an alert")
    for seed, monitors in false_alarms.items():
        if monitors:
            print(f"  seed {seed}: {', '.join(monitors)}")
    print("mould cooling -10 °C over 600 s from frame 2,000: frames until each monitor's first alert")
    print(f"{'monitor':<32} {'runs':>5} {'median':>7} {'max':>6}")
    for monitor, values in sorted(delays.items()):
        print(f"{monitor:<32} {len(values):>5} {statistics.median(values):>7.0f} {max(values):>6}")
    write(
        "drift",
        {
            "seeds": args.seeds,
            "stationary_runs_with_alerts": runs_alerting,
            "false_alarms": {str(k): v for k, v in false_alarms.items()},
            "delays": delays,
            "missed": {str(k): v for k, v in missed.items()},
        },
    )


def bench_es_bulk(args: argparse.Namespace) -> None:
    from services.storage.elasticsearch_record_store import ElasticsearchRecordStore

    server = None
    url = args.url
    if url is None:
        from osmem_server import OsmemServer

        server = OsmemServer.start(japanese=False)
        url = server.url
    records = list(synthetic_inspections(args.records, seed=args.seed))
    try:
        with ElasticsearchRecordStore(f"{url.rstrip('/')}/bench-{int(time.time())}") as store:
            start = time.perf_counter()
            for k in tqdm(range(0, len(records), 500), desc="bulk", unit="batch"):
                store.upsert_inspections(records[k : k + 500])
            seconds = time.perf_counter() - start
    finally:
        if server is not None:
            server.close()
    rate = len(records) / seconds
    kind = "osmem-server (in-memory stand-in)" if server is not None else url
    print(f"\n{len(records):,} records in {seconds:.1f} s: {rate:,.0f} records/s into {kind}")
    write("es_bulk", {"records": len(records), "seconds": seconds, "records_per_s": rate, "server": kind})


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="bench", required=True)
    causes = sub.add_parser("causes")
    causes.add_argument("--records", type=int, default=1_000_000)
    causes.add_argument("--repeats", type=int, default=20)
    causes.add_argument("--db", help="reuse (or keep) this SQLite file")
    causes.add_argument("--seed", type=int, default=1)
    cluster = sub.add_parser("cluster")
    cluster.add_argument("--defects", type=int, default=10_000)
    cluster.add_argument("--kinds", type=int, default=5)
    cluster.add_argument("--reducer", choices=("umap", "pca"), default="umap")
    cluster.add_argument("--seed", type=int, default=1)
    drift = sub.add_parser("drift")
    drift.add_argument("--seeds", type=int, default=20)
    es = sub.add_parser("es-bulk")
    es.add_argument("--records", type=int, default=20_000)
    es.add_argument("--url")
    es.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    {"causes": bench_causes, "cluster": bench_cluster, "drift": bench_drift, "es-bulk": bench_es_bulk}[
        args.bench
    ](args)


if __name__ == "__main__":
    main()
