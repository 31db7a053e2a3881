"""Plant analytics on the command line: ``linewatch query``, ``linewatch causes`` and
``linewatch cluster`` (and ``linewatch kibana``, which writes Kibana's saved objects).

They read the record store named by ``--records`` (default: ``stores.records`` of ``--config``, else
``sqlite:///runs/records.db``), take the same filters, and print a table (``--json`` for machines).
A bad query (an unknown field or parameter, a bad range) exits with status 2 and says why.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from pydantic import ValidationError

from services.analytics.causes import OUTCOME_FIELDS, CauseReport
from services.analytics.clustering import ClusterRun, ClusterSettings
from services.analytics.run import query_error_message, report_json, row_json, run_causes, run_query
from services.config import load_settings
from services.storage.analytics_query import (
    DEFECT_FIELDS,
    MEASURES,
    RECORD_FIELDS,
    AnalyticsQuery,
    GroupBy,
    QueryError,
    ResultRow,
    describe_key,
)
from services.storage.ports import AnalyticsStore
from services.storage.query import InspectionQuery
from services.storage.stores import open_record_store

_FIELD_ALIASES = {
    "line": "line_id",
    "camera": "camera_id",
    "location": "defect_location",
    "cluster": "cluster_id",
}
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd]?)$")
_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def add_commands(sub: argparse._SubParsersAction) -> None:
    query = sub.add_parser(
        "query",
        help="count frames, NG rate, score and defect area by line, camera, defect, time or parameter bins",
        description="Group the stored inspections and measure each group. --by takes a field ("
        + ", ".join((*RECORD_FIELDS, *DEFECT_FIELDS))
        + "), time:INTERVAL (600, 10m, 1h) or a process parameter with a bin width (mould_temp_c:2) "
        "or bin edges (mould_temp_c:55,60,65). Example: linewatch query --by mould_temp_c:2 --by severity",
    )
    _add_store_and_filters(query)
    query.add_argument("--by", action="append", default=[], metavar="GROUP", help="group by this (at most 2)")
    query.add_argument("--measure", action="append", choices=MEASURES, help="measures to show (default: all)")
    query.set_defaults(handler=run_query_command)

    causes = sub.add_parser(
        "causes",
        help="rank the process parameters and ranges that best separate NG from OK parts",
        description="For every recorded process parameter: the range with the most different NG rate, "
        "its rate ratio with a 95%% confidence interval and sample size, re-measured with each other "
        "candidate held fixed so that a parameter that only moves with a cause is reported as explained "
        "by it. --outcome ranks causes of something else: severity=critical, location=center, cluster=3.",
    )
    _add_store_and_filters(causes)
    causes.add_argument(
        "--outcome",
        metavar="FIELD=VALUE",
        help="what to explain (default verdict=NG); fields: "
        + ", ".join(("verdict", "location", "severity", "cluster")),
    )
    causes.add_argument("--top", type=int, default=10, help="show this many parameters (default 10)")
    causes.set_defaults(handler=run_causes_command)

    cluster = sub.add_parser(
        "cluster",
        help="cluster the defects of NG frames, write the cluster ids back, flag new kinds of defect",
        description="Groups the stored defects by their embeddings (UMAP, then HDBSCAN), keeps the ids of "
        "clusters already known, gives new groups new ids and flags those unlike every known cluster as "
        "novel (an alert each). Writes the ids into the records unless --dry-run; --report DIR writes an "
        "HTML page with example thumbnails. The filters choose which NG frames are read.",
    )
    _add_store_and_filters(cluster)
    cluster.add_argument("--blobs", metavar="URL", help="blob store for thumbnails (default: from --config)")
    cluster.add_argument("--report", type=Path, metavar="DIR", help="write DIR/index.html")
    cluster.add_argument("--reducer", choices=("umap", "pca"), help="default umap")
    cluster.add_argument("--min-cluster-size", type=int, help="HDBSCAN's smallest cluster (default 10)")
    cluster.add_argument("--max-defects", type=int, help="read at most this many, newest first (20000)")
    cluster.add_argument(
        "--match-distance", type=float, help="cosine distance to a known cluster's centre (default 0.2)"
    )
    cluster.add_argument("--dry-run", action="store_true", help="store nothing: no ids, no alerts")
    cluster.set_defaults(handler=run_cluster_command)

    report = sub.add_parser(
        "report",
        help="an HTML inspection report: one inspection (--frame) or a period (the filters)",
        description="Writes one self-contained HTML page: per inspection the overlay, defects, process "
        "data and its most telling parameters (values in a risky range of the root-cause ranking); for a "
        "period also its counts and the ranking, then the highest-scoring NG inspections. Print it to PDF "
        "from a browser.",
    )
    _add_store_and_filters(report)
    report.add_argument(
        "--blobs", metavar="URL", help="blob store of frames and heat maps (default: from --config)"
    )
    report.add_argument("--frame", metavar="FRAME_ID", help="report this inspection only")
    report.add_argument("--max", type=int, default=20, help="NG inspections shown for a period (default 20)")
    report.add_argument("--out", type=Path, required=True, help="the HTML file to write")
    report.set_defaults(handler=run_report_command)

    kibana = sub.add_parser(
        "kibana",
        help="write Kibana saved objects (data view, plant dashboard) for the Elasticsearch store",
        description="Writes ndjson for Kibana's Saved objects import: a data view on PREFIX-inspections-*, "
        "visualisations (NG rate over time, defects by location and severity, score histogram, the NG "
        "share per bin of each process parameter) and a dashboard holding them.",
    )
    kibana.add_argument("--prefix", default="linewatch", help="the store's index prefix (%(default)s)")
    kibana.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME[:WIDTH]",
        help="a process parameter to chart, with its bin width (default: the demo line's parameters)",
    )
    kibana.add_argument("--out", type=Path, help="file to write (default: standard output)")
    kibana.set_defaults(handler=run_kibana_command)


def _add_store_and_filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--records", metavar="URL", help="record store URL (default: from --config)")
    parser.add_argument("--config", type=Path, help="settings file whose stores.records to read")
    parser.add_argument(
        "--from", dest="captured_from", metavar="TIME", help="captured at or after (ISO 8601)"
    )
    parser.add_argument("--to", dest="captured_to", metavar="TIME", help="captured before (ISO 8601)")
    parser.add_argument("--line", dest="line_id")
    parser.add_argument("--camera", dest="camera_id")
    parser.add_argument("--recipe")
    parser.add_argument("--verdict", choices=("OK", "NG"))
    parser.add_argument("--location", dest="defect_location", help="has a defect in this cell, e.g. center")
    parser.add_argument("--severity", choices=("minor", "major", "critical"), help="has a defect this severe")
    parser.add_argument("--cluster", dest="cluster_id", type=int, help="has a defect in this cluster")
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=LOW..HIGH",
        help="process parameter range, inclusive; leave an end empty for an open range (mould_temp_c=..55)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def records_url(args: argparse.Namespace) -> str:
    if args.records:
        return str(args.records)
    if args.config is not None:
        return load_settings(args.config).stores.records
    default = Path("linewatch.yaml")
    return load_settings(default).stores.records if default.is_file() else "sqlite:///runs/records.db"


def _time(text: str | None, flag: str) -> datetime | None:
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise QueryError(f"{flag} {text!r} is not an ISO 8601 time, e.g. 2025-01-06T06:00:00Z") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _number(text: str, what: str) -> float | None:
    if text == "":
        return None
    try:
        value = float(text)
    except ValueError:
        raise QueryError(f"{what}: {text!r} is not a number") from None
    if not math.isfinite(value):
        raise QueryError(f"{what}: {text!r} is not a finite number")
    return value


def parse_param_range(text: str) -> tuple[str, tuple[float | None, float | None]]:
    """``NAME=LOW..HIGH`` (either end may be empty) or ``NAME=VALUE``."""
    name, sep, spec = text.partition("=")
    if not sep or not name.strip():
        raise QueryError(f"--param {text!r}: expected NAME=LOW..HIGH, e.g. mould_temp_c=50..55")
    low, dots, high = spec.partition("..")
    if not dots:
        value = _number(spec, f"--param {name}")
        return name.strip(), (value, value)
    return name.strip(), (_number(low, f"--param {name}"), _number(high, f"--param {name}"))


def build_filters(args: argparse.Namespace) -> InspectionQuery:
    params = dict(parse_param_range(text) for text in args.param)
    fields: dict[str, Any] = {
        "captured_from": _time(args.captured_from, "--from"),
        "captured_to": _time(args.captured_to, "--to"),
        "params": params,
    }
    for name in ("line_id", "camera_id", "recipe", "verdict", "defect_location", "severity", "cluster_id"):
        fields[name] = getattr(args, name)
    return InspectionQuery(**fields)


def parse_group(text: str) -> GroupBy:
    """``FIELD``, ``time:INTERVAL``, ``PARAM:WIDTH`` or ``PARAM:E1,E2,...``."""
    name, sep, spec = text.partition(":")
    name = _FIELD_ALIASES.get(name, name)
    if name == "time":
        match = _DURATION.match(spec)
        if not match:
            raise QueryError(f"--by {text!r}: expected time:SECONDS or time:10m / time:1h / time:1d")
        seconds = int(float(match.group(1)) * _SECONDS[match.group(2)])
        return GroupBy(field="time", interval_s=seconds)
    if name in (*RECORD_FIELDS, *DEFECT_FIELDS) or (name.startswith("param:") and not sep):
        if sep:
            raise QueryError(f"--by {text!r}: {name} takes no bins")
        return GroupBy(field=name)
    param = name.removeprefix("param:")
    if not sep or not spec:
        raise QueryError(
            f"--by {text!r}: a process parameter needs a bin width ({param}:2) or edges ({param}:55,60,65); "
            f"fields: {', '.join((*RECORD_FIELDS, *DEFECT_FIELDS, 'time'))}"
        )
    numbers = [_number(part, f"--by {param}") for part in spec.split(",")]
    if any(n is None for n in numbers):
        raise QueryError(f"--by {text!r}: empty bin edge")
    values = cast(list[float], numbers)
    if len(values) == 1:
        return GroupBy(field=f"param:{param}", width=values[0])
    return GroupBy(field=f"param:{param}", edges=tuple(values))


def _open(args: argparse.Namespace) -> AnalyticsStore:
    store = open_record_store(records_url(args))
    if not hasattr(store, "aggregate"):
        raise QueryError(f"the record store {records_url(args)} cannot answer analytics queries")
    return cast(AnalyticsStore, store)


def run_query_command(args: argparse.Namespace) -> int:
    try:
        query = AnalyticsQuery(
            filters=build_filters(args),
            group_by=tuple(parse_group(text) for text in args.by),
            measures=tuple(args.measure or MEASURES),
        )
        store = _open(args)
        try:
            rows = run_query(store, query)
        finally:
            store.close()  # type: ignore[attr-defined]
    except (QueryError, ValidationError) as err:
        print(f"linewatch query: error: {query_error_message(err)}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps([row_json(query, row) for row in rows], indent=2))
    else:
        print_table(query, rows)
    return 0


def _cell(name: str, value: float | int | None) -> str:
    if value is None:
        return "-"
    if name == "ng_rate":
        return f"{value:.1%}"
    if name in ("mean_score",):
        return f"{value:.3f}"
    if name == "mean_defect_area_px":
        return f"{value:.0f}"
    return str(value)


def print_table(query: AnalyticsQuery, rows: list[ResultRow]) -> None:
    header = [g.param or g.field for g in query.group_by] + list(query.measures)
    body = [
        [describe_key(g, k) for g, k in zip(query.group_by, row.keys, strict=True)]
        + [_cell(name, row.values[name]) for name in query.measures]
        for row in rows
    ]
    if not body:
        print("no matching inspections")
        return
    widths = [max(len(str(line[i])) for line in [header, *body]) for i in range(len(header))]
    for line in [header, *body]:
        print("  ".join(str(cell).rjust(width) for cell, width in zip(line, widths, strict=True)))


def parse_outcome(text: str | None) -> InspectionQuery | None:
    if text is None:
        return None
    name, sep, value = text.partition("=")
    name = _FIELD_ALIASES.get(name.strip(), name.strip())
    if not sep or name not in OUTCOME_FIELDS:
        raise QueryError(f"--outcome {text!r}: expected FIELD=VALUE with FIELD one of verdict, location, "
                         "severity, cluster")  # fmt: skip
    return InspectionQuery.model_validate({name: int(value) if name == "cluster_id" else value.strip()})


def run_causes_command(args: argparse.Namespace) -> int:
    try:
        filters, outcome = build_filters(args), parse_outcome(args.outcome)
        store = _open(args)
        try:
            report = run_causes(store, filters, outcome)
        finally:
            store.close()  # type: ignore[attr-defined]
    except (QueryError, ValidationError) as err:
        print(f"linewatch causes: error: {query_error_message(err)}", file=sys.stderr)
        return 2
    except ValueError as err:
        print(f"linewatch causes: error: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report_json(report), indent=2))
        return 0
    print_causes(report, args.top)
    return 0


def print_causes(report: CauseReport, top: int) -> None:
    if report.frames == 0:
        print("no matching inspections")
        return
    print(f"{report.outcome}: {report.hits} of {report.frames} frames ({report.base_rate:.1%})")
    if not report.causes:
        print("no process parameter separates them (every frame alike, or no process data)")
    for rank, cause in enumerate(report.causes[:top], start=1):
        print(f"{rank:>2}. [{cause.status}] {cause.sentence(report.outcome)}")
    for name, why in report.skipped.items():
        print(f"    skipped {name}: {why}")


def run_kibana_command(args: argparse.Namespace) -> int:
    from services.analytics.kibana import DEMO_PARAMS, saved_objects, to_ndjson

    params: list[tuple[str, float | None]] = []
    for text in args.param:
        name, _, width = text.partition(":")
        try:
            params.append((name, _number(width, f"--param {name}") if width else None))
        except QueryError as err:
            print(f"linewatch kibana: error: {err}", file=sys.stderr)
            return 2
    text = to_ndjson(saved_objects(args.prefix, params or DEMO_PARAMS))
    if args.out is None:
        sys.stdout.write(text)
    else:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
        print(f"wrote {text.count(chr(10))} saved objects to {args.out}")
    return 0


def cluster_settings(args: argparse.Namespace) -> ClusterSettings:
    """The ``clustering:`` settings of the config file (if any), with the command's options."""
    config = args.config if args.config is not None else Path("linewatch.yaml")
    base = load_settings(config).clustering if config.is_file() else ClusterSettings()
    options = {
        "reducer": args.reducer,
        "min_cluster_size": args.min_cluster_size,
        "max_defects": args.max_defects,
        "match_distance": args.match_distance,
    }
    return ClusterSettings.model_validate(
        {**base.model_dump(), **{k: v for k, v in options.items() if v is not None}}
    )


def blobs_url(args: argparse.Namespace) -> str | None:
    if args.blobs:
        return str(args.blobs)
    config = args.config if args.config is not None else Path("linewatch.yaml")
    return load_settings(config).stores.blobs if config.is_file() else None


def run_cluster_command(args: argparse.Namespace) -> int:
    from services.analytics.cluster_report import write_cluster_report
    from services.analytics.clustering import cluster_defects
    from services.storage.stores import open_blob_store

    try:
        if args.verdict == "OK":
            raise QueryError("clustering reads the defects of NG frames: --verdict OK selects none")
        settings, filters = cluster_settings(args), build_filters(args)
        store = open_record_store(records_url(args))
    except (QueryError, ValidationError) as err:
        print(f"linewatch cluster: error: {query_error_message(err)}", file=sys.stderr)
        return 2
    except ValueError as err:
        print(f"linewatch cluster: error: {err}", file=sys.stderr)
        return 2
    try:
        run = cluster_defects(store, settings, filters, write=not args.dry_run, progress=not args.json)
        if args.report is not None:
            url = blobs_url(args)
            blobs = open_blob_store(url) if url else None
            try:
                page = write_cluster_report(run, store, blobs, args.report)
            finally:
                if blobs is not None:
                    blobs.close()
    finally:
        store.close()
    if args.json:
        print(json.dumps(run.as_json(), indent=2))
        return 0
    print_clusters(run, dry_run=args.dry_run)
    if args.report is not None:
        print(f"report: {page}")
    return 0


def print_clusters(run: ClusterRun, dry_run: bool = False) -> None:
    if run.defects == 0:
        print("no defects with embeddings among the NG frames read (PatchCore models give them)")
        return
    print(
        f"{run.defects} defects: {len(run.clusters)} clusters ({len(run.novel)} novel), {run.noise} in none;"
        f" {run.reducer}, {run.seconds:.1f} s"
    )
    print(f"{'cluster':>7}  {'defects':>7}  {'first seen':<19}  {'last seen':<19}  where")
    for c in sorted(run.clusters, key=lambda c: (not c.novel, -c.size)):
        where = ", ".join(f"{k} {v}" for k, v in list(c.locations.items())[:3])
        flag = "  NOVEL" if c.novel else ""
        seen = f"{c.first_seen:%Y-%m-%d %H:%M:%S}  {c.last_seen:%Y-%m-%d %H:%M:%S}"
        print(f"{c.cluster_id:>7}  {c.size:>7}  {seen}  {where}{flag}")
    changed = "would change" if dry_run else "changed"
    print(f"{changed} the cluster ids of {run.changed_records} records")


def run_report_command(args: argparse.Namespace) -> int:
    from services.api.report import inspection_report, range_report
    from services.storage.stores import open_blob_store

    try:
        filters = build_filters(args)
        url = blobs_url(args) or "file:runs/blobs"
        store = open_record_store(records_url(args))
    except (QueryError, ValidationError) as err:
        print(f"linewatch report: error: {query_error_message(err)}", file=sys.stderr)
        return 2
    except ValueError as err:
        print(f"linewatch report: error: {err}", file=sys.stderr)
        return 2
    blobs = open_blob_store(url)
    try:
        if args.frame:
            inspection = store.get_inspection(args.frame)
            if inspection is None:
                print(f"linewatch report: error: no inspection with frame id {args.frame}", file=sys.stderr)
                return 2
            page = inspection_report(store, blobs, inspection)
        else:
            page = range_report(store, blobs, filters, max(1, args.max))
    finally:
        blobs.close()
        store.close()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(page, encoding="utf-8")
    print(f"wrote {args.out} ({len(page) / 1024:.0f} KB)")
    return 0
