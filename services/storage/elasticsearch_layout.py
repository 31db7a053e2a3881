"""How records lie in Elasticsearch: index names, the index templates, documents, and the query and
aggregation bodies that mirror the SQLite store's SQL.

* Inspections go to daily indices ``<prefix>-inspections-YYYY.MM.DD`` (by capture time), one
  document per frame with ``frame_id`` as ``_id``: storing a record twice leaves one document.
  Old days are dropped by deleting their index (or by an ILM policy on the template).
* Every field a query filters or groups by is a keyword, number or date; defects are ``nested``
  (so that "a defect at the centre that is critical" can be asked of one defect), and their
  locations, severities and clusters are repeated as plain arrays for Kibana, whose
  visualisations cannot aggregate nested fields; process
  parameters are ``params.<name>`` doubles (a dynamic template maps each new one), with their
  names listed in ``param_names``. The whole record is kept, unindexed, in ``record``.
* Times are kept twice: ``captured_at`` (a date, for Kibana) and ``captured_at_us`` (microseconds,
  a long) so that filters and time buckets agree with SQLite to the microsecond.
* Defect embeddings are a ``dense_vector`` on Elasticsearch and a ``knn_vector`` on OpenSearch
  (the test server speaks OpenSearch's API); both only when ``embedding_dims`` is set.
"""

from __future__ import annotations

import itertools
from datetime import UTC
from typing import Any, Literal

from schemas.alert import Alert
from schemas.dead_letter import DeadLetter
from schemas.inspection import Inspection
from services.storage.analytics_query import GroupBy
from services.storage.query import InspectionQuery
from services.storage.sqlite_sql import to_us

Flavour = Literal["elasticsearch", "opensearch"]
TERMS_SIZE = 10_000
"""Most groups one terms aggregation returns; more is refused rather than cut silently."""


def escape_param(name: str) -> str:
    """A process parameter's name as a field name under ``params`` ('.' would nest objects)."""
    return name.replace("%", "%25").replace(".", "%2E")


def param_field(name: str) -> str:
    return f"params.{escape_param(name)}"


def inspections_index(prefix: str, inspection: Inspection) -> str:
    return f"{prefix}-inspections-{inspection.captured_at.astimezone(UTC):%Y.%m.%d}"


def inspection_template(prefix: str, flavour: Flavour, embedding_dims: int = 0) -> dict[str, Any]:
    keyword = {"type": "keyword"}
    defect_properties: dict[str, Any] = {
        "location": keyword,
        "severity": keyword,
        "defect_class": keyword,
        "cluster_id": {"type": "integer"},
        "area_px": {"type": "long"},
        "area_share": {"type": "double"},
        "max_score": {"type": "double"},
        "mean_score": {"type": "double"},
    }
    if embedding_dims:
        defect_properties["embedding"] = (
            {"type": "dense_vector", "dims": embedding_dims, "index": True, "similarity": "cosine"}
            if flavour == "elasticsearch"
            else {"type": "knn_vector", "dimension": embedding_dims}
        )
    return {
        "index_patterns": [f"{prefix}-inspections-*"],
        "template": {
            "settings": {"number_of_shards": 1},
            "mappings": {
                "dynamic": "strict",
                "dynamic_templates": [
                    {"process_params": {"path_match": "params.*", "mapping": {"type": "double"}}}
                ],
                "properties": {
                    "frame_id": keyword,
                    "line_id": keyword,
                    "station_id": keyword,
                    "camera_id": keyword,
                    "part_id": keyword,
                    "recipe": keyword,
                    "model_name": keyword,
                    "model_version": keyword,
                    "verdict": keyword,
                    "process_status": keyword,
                    "captured_at": {"type": "date"},
                    "captured_at_us": {"type": "long"},
                    "inspected_at": {"type": "date"},
                    "score": {"type": "double"},
                    "score_raw": {"type": "double"},
                    "defect_count": {"type": "integer"},
                    "defect_area_px": {"type": "long"},
                    "process_age_s": {"type": "double"},
                    "defects": {"type": "nested", "properties": defect_properties},
                    "defect_locations": keyword,
                    "defect_severities": keyword,
                    "defect_clusters": {"type": "integer"},
                    "params": {"type": "object", "dynamic": True},
                    "param_names": keyword,
                    "record": {"type": "object", "enabled": False},
                },
            },
        },
    }


def simple_template(prefix: str, name: str, properties: dict[str, Any]) -> dict[str, Any]:
    return {
        "index_patterns": [f"{prefix}-{name}"],
        "template": {
            "settings": {"number_of_shards": 1},
            "mappings": {
                "dynamic": "strict",
                "properties": {**properties, "record": {"type": "object", "enabled": False}},
            },
        },
    }


ALERT_PROPERTIES = {
    "alert_id": {"type": "keyword"},
    "line_id": {"type": "keyword"},
    "camera_id": {"type": "keyword"},
    "kind": {"type": "keyword"},
    "severity": {"type": "keyword"},
    "message": {"type": "text"},
    "raised_at": {"type": "date"},
    "raised_at_us": {"type": "long"},
}
DEAD_LETTER_PROPERTIES = {
    "frame_id": {"type": "keyword"},
    "source": {"type": "keyword"},
    "reason": {"type": "text"},
    "failed_at": {"type": "date"},
    "failed_at_us": {"type": "long"},
    "seq": {"type": "long"},
}


def inspection_document(inspection: Inspection, embedding_dims: int = 0) -> dict[str, Any]:
    record = inspection.model_dump(mode="json")
    return {
        "frame_id": inspection.frame_id,
        "line_id": inspection.line_id,
        "station_id": inspection.station_id,
        "camera_id": inspection.camera_id,
        "part_id": inspection.part_id,
        "recipe": inspection.recipe,
        "model_name": inspection.model_name,
        "model_version": inspection.model_version,
        "verdict": inspection.verdict,
        "process_status": inspection.process.status,
        "captured_at": record["captured_at"],
        "captured_at_us": to_us(inspection.captured_at),
        "inspected_at": record["inspected_at"],
        "score": inspection.score,
        "score_raw": inspection.score_raw,
        "defect_count": len(inspection.defects),
        "defect_area_px": sum(d.area_px for d in inspection.defects),
        "process_age_s": inspection.process.age_s,
        "defects": [
            {
                "location": d.location,
                "severity": d.severity,
                "defect_class": d.defect_class,
                "cluster_id": d.cluster_id,
                "area_px": d.area_px,
                "area_share": d.area_share,
                "max_score": d.max_score,
                "mean_score": d.mean_score,
                **(
                    {"embedding": d.embedding}
                    if embedding_dims and len(d.embedding) == embedding_dims
                    else {}
                ),
            }
            for d in inspection.defects
        ],
        "defect_locations": sorted({d.location for d in inspection.defects}),
        "defect_severities": sorted({d.severity for d in inspection.defects}),
        "defect_clusters": sorted({d.cluster_id for d in inspection.defects if d.cluster_id is not None}),
        "params": {escape_param(k): v for k, v in inspection.process.params.items()},
        "param_names": sorted(inspection.process.params),
        "record": record,
    }


def alert_document(alert: Alert) -> dict[str, Any]:
    record = alert.model_dump(mode="json")
    return {
        "alert_id": alert.alert_id,
        "line_id": alert.line_id,
        "camera_id": alert.camera_id,
        "kind": alert.kind,
        "severity": alert.severity,
        "message": alert.message,
        "raised_at": record["raised_at"],
        "raised_at_us": to_us(alert.raised_at),
        "record": record,
    }


def dead_letter_document(letter: DeadLetter, seq: int) -> dict[str, Any]:
    record = letter.model_dump(mode="json")
    return {
        "frame_id": letter.frame_id,
        "source": letter.source,
        "reason": letter.reason,
        "failed_at": record["failed_at"],
        "failed_at_us": to_us(letter.failed_at),
        "seq": seq,
        "record": record,
    }


def _nested_term(field: str, value: object) -> dict[str, Any]:
    return {"nested": {"path": "defects", "query": {"term": {f"defects.{field}": value}}}}


def filter_query(filters: InspectionQuery) -> dict[str, Any]:
    """The filters as a bool query; the same frames as ``sqlite_sql.where_clause``."""
    clauses: list[dict[str, Any]] = []
    time_range: dict[str, int] = {}
    if filters.captured_from is not None:
        time_range["gte"] = to_us(filters.captured_from)
    if filters.captured_to is not None:
        time_range["lt"] = to_us(filters.captured_to)
    if time_range:
        clauses.append({"range": {"captured_at_us": time_range}})
    for name in ("line_id", "camera_id", "recipe", "verdict"):
        value = getattr(filters, name)
        if value is not None:
            clauses.append({"term": {name: value}})
    if filters.defect_location is not None:
        clauses.append(_nested_term("location", filters.defect_location))
    if filters.severity is not None:
        clauses.append(_nested_term("severity", filters.severity))
    if filters.cluster_id is not None:
        clauses.append(_nested_term("cluster_id", filters.cluster_id))
    for name, (low, high) in sorted(filters.params.items()):
        bounds: dict[str, float] = {}
        if low is not None:
            bounds["gte"] = low
        if high is not None:
            bounds["lte"] = high
        field = param_field(name)
        clauses.append({"range": {field: bounds}} if bounds else {"exists": {"field": field}})
    return {"bool": {"filter": clauses}} if clauses else {"match_all": {}}


MEASURE_AGGS: dict[str, Any] = {
    "ng": {"filter": {"term": {"verdict": "NG"}}},
    "score_sum": {"sum": {"field": "score"}},
    "area_sum": {"sum": {"field": "defect_area_px"}},
}
DEFECT_COLUMNS = {"defect_location": "location", "severity": "severity", "cluster_id": "cluster_id"}


def group_aggregation(group: GroupBy, inner: dict[str, Any]) -> dict[str, Any]:
    """One level of the aggregation tree for ``group``, with ``inner`` below every bucket."""
    if group.kind == "record":
        return {"terms": {"field": group.field, "size": TERMS_SIZE}, "aggs": inner}
    if group.kind == "defect":
        field = f"defects.{DEFECT_COLUMNS[group.field]}"
        return {
            "nested": {"path": "defects"},
            "aggs": {
                "g": {
                    "terms": {"field": field, "size": TERMS_SIZE},
                    "aggs": {"frames": {"reverse_nested": {}, "aggs": inner}},
                }
            },
        }
    if group.kind == "time":
        assert group.interval_s is not None
        step = group.interval_s * 1_000_000
        return {"histogram": {"field": "captured_at_us", "interval": step, "min_doc_count": 1}, "aggs": inner}
    assert group.param is not None
    field = param_field(group.param)
    if group.width is not None:
        return {"histogram": {"field": field, "interval": group.width, "min_doc_count": 1}, "aggs": inner}
    assert group.edges is not None
    edges = group.edges
    ranges: list[dict[str, float]] = [{"to": edges[0]}]
    ranges += [{"from": low, "to": high} for low, high in itertools.pairwise(edges)]
    ranges.append({"from": edges[-1]})
    return {"range": {"field": field, "ranges": ranges}, "aggs": inner}
