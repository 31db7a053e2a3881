"""Kibana saved objects for the Elasticsearch record store: a data view and a plant dashboard.

``linewatch kibana`` writes them as ndjson for Kibana's *Stack Management → Saved objects →
Import* (or ``POST /api/saved_objects/_import``). The process parameters differ from plant to
plant, so the parameter panels are generated for the parameters named; ``deploy/kibana/`` holds
the file for the demo line's parameters.

The dashboard: NG rate over time per line (TSVB filter ratio), frames with defects by location
and by severity, the anomaly-score histogram, and for each parameter its histogram split by verdict
shown as shares (the parameter-vs-NG-rate view: where the NG share of a bin rises, look there).
Visualisations are Kibana's aggregation-based kind, which Kibana 8 imports and migrates; they
use only top-level fields (Kibana cannot aggregate nested ones), which the index template
provides (``defect_locations``, ``defect_severities``, ``params.*``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from services.storage.elasticsearch_layout import param_field

KIBANA_VERSION = "8.15.3"
"""The Kibana the objects were written for (the docker-compose stack's)."""


def _id(prefix: str, name: str) -> str:
    return f"{prefix}-{name}"


def data_view(prefix: str) -> dict[str, Any]:
    return {
        "type": "index-pattern",
        "id": _id(prefix, "inspections"),
        "attributes": {
            "title": f"{prefix}-inspections-*",
            "name": f"{prefix} inspections",
            "timeFieldName": "captured_at",
        },
        "references": [],
        "coreMigrationVersion": "8.8.0",
        "typeMigrationVersion": "8.0.0",
    }


def _search_source(prefix: str) -> dict[str, Any]:
    source = {
        "query": {"query": "", "language": "kuery"},
        "filter": [],
        "indexRefName": "kibanaSavedObjectMeta.searchSourceJSON.index",
    }
    return {"searchSourceJSON": json.dumps(source)}


def _visualization(
    prefix: str, name: str, title: str, vis_state: dict[str, Any], uses_index: bool = True
) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "title": title,
        "visState": json.dumps({"title": title, **vis_state}),
        "uiStateJSON": "{}",
        "description": "",
        "version": 1,
        "kibanaSavedObjectMeta": _search_source(prefix) if uses_index else {"searchSourceJSON": "{}"},
    }
    references = (
        [
            {
                "name": "kibanaSavedObjectMeta.searchSourceJSON.index",
                "type": "index-pattern",
                "id": _id(prefix, "inspections"),
            }
        ]
        if uses_index
        else []
    )
    return {
        "type": "visualization",
        "id": _id(prefix, name),
        "attributes": attributes,
        "references": references,
        "coreMigrationVersion": "8.8.0",
        "typeMigrationVersion": "8.5.0",
    }


def _count() -> dict[str, Any]:
    return {"id": "1", "enabled": True, "type": "count", "schema": "metric", "params": {}}


def _bar(aggs: list[dict[str, Any]], percentage: bool = False) -> dict[str, Any]:
    return {
        "type": "histogram",
        "aggs": aggs,
        "params": {
            "type": "histogram",
            "addTooltip": True,
            "addLegend": True,
            "legendPosition": "right",
            "seriesParams": [
                {
                    "show": True,
                    "type": "histogram",
                    "mode": "percentage" if percentage else "stacked",
                    "data": {"label": "Count", "id": "1"},
                    "valueAxis": "ValueAxis-1",
                }
            ],
            "valueAxes": [
                {
                    "id": "ValueAxis-1",
                    "name": "LeftAxis-1",
                    "type": "value",
                    "position": "left",
                    "show": True,
                    "scale": {"type": "linear", "mode": "percentage" if percentage else "normal"},
                    "labels": {"show": True},
                    "title": {"text": "share of frames" if percentage else "frames"},
                }
            ],
            "categoryAxes": [
                {
                    "id": "CategoryAxis-1",
                    "type": "category",
                    "position": "bottom",
                    "show": True,
                    "scale": {"type": "linear"},
                    "labels": {"show": True},
                    "title": {},
                }
            ],
        },
    }


def _terms(agg_id: str, schema: str, field: str, size: int = 10) -> dict[str, Any]:
    return {
        "id": agg_id,
        "enabled": True,
        "type": "terms",
        "schema": schema,
        "params": {"field": field, "size": size, "order": "desc", "orderBy": "1"},
    }


def ng_rate_over_time(prefix: str) -> dict[str, Any]:
    params = {
        "type": "timeseries",
        "index_pattern": f"{prefix}-inspections-*",
        "time_field": "captured_at",
        "interval": "auto",
        "axis_formatter": "number",
        "series": [
            {
                "id": "ng-rate",
                "label": "NG rate",
                "color": "#E7664C",
                "split_mode": "terms",
                "terms_field": "line_id",
                "terms_size": "10",
                "chart_type": "line",
                "formatter": "percent",
                "metrics": [
                    {
                        "id": "ng-rate-metric",
                        "type": "filter_ratio",
                        "numerator": {"query": 'verdict : "NG"', "language": "kuery"},
                        "denominator": {"query": "*", "language": "kuery"},
                        "metric_agg": "count",
                    }
                ],
            }
        ],
    }
    return _visualization(
        prefix,
        "ng-rate",
        "NG rate over time by line",
        {"type": "metrics", "aggs": [], "params": params},
        uses_index=False,
    )


def defects_by(prefix: str, field: str, title: str, name: str) -> dict[str, Any]:
    aggs = [_count(), _terms("2", "segment", field, 9), _terms("3", "group", "verdict", 2)]
    return _visualization(prefix, name, title, _bar(aggs))


def score_histogram(prefix: str) -> dict[str, Any]:
    aggs = [
        _count(),
        {
            "id": "2",
            "enabled": True,
            "type": "histogram",
            "schema": "segment",
            "params": {"field": "score", "interval": 0.05, "min_doc_count": False, "extended_bounds": {}},
        },
        _terms("3", "group", "camera_id", 10),
    ]
    return _visualization(prefix, "score-histogram", "Anomaly score by camera", _bar(aggs))


def param_vs_ng(prefix: str, param: str, interval: float | None) -> dict[str, Any]:
    histogram: dict[str, Any] = {"field": param_field(param), "min_doc_count": False, "extended_bounds": {}}
    histogram["interval"] = interval if interval is not None else "auto"
    aggs = [
        _count(),
        {"id": "2", "enabled": True, "type": "histogram", "schema": "segment", "params": histogram},
        _terms("3", "group", "verdict", 2),
    ]
    name = "param-" + param.replace("_", "-").replace(".", "-").lower()
    return _visualization(prefix, name, f"NG share by {param}", _bar(aggs, percentage=True))


def dashboard(prefix: str, panels: Sequence[dict[str, Any]]) -> dict[str, Any]:
    layout = []
    references = []
    for n, panel in enumerate(panels):
        ref = f"panel_{n}"
        width = 48 if n == 0 else 24
        x = 0 if n == 0 else ((n - 1) % 2) * 24
        y = 0 if n == 0 else 15 + ((n - 1) // 2) * 15
        layout.append(
            {
                "version": KIBANA_VERSION,
                "type": "visualization",
                "gridData": {"x": x, "y": y, "w": width, "h": 15, "i": str(n + 1)},
                "panelIndex": str(n + 1),
                "embeddableConfig": {"enhancements": {}},
                "panelRefName": ref,
            }
        )
        references.append({"name": ref, "type": "visualization", "id": panel["id"]})
    return {
        "type": "dashboard",
        "id": _id(prefix, "plant"),
        "attributes": {
            "title": f"linewatch plant ({prefix})",
            "description": "NG rate, defects, scores and the process parameters behind them",
            "panelsJSON": json.dumps(layout),
            "optionsJSON": json.dumps({"useMargins": True, "syncColors": False, "hidePanelTitles": False}),
            "timeRestore": False,
            "version": 1,
            "kibanaSavedObjectMeta": {
                "searchSourceJSON": json.dumps({"query": {"query": "", "language": "kuery"}, "filter": []})
            },
        },
        "references": references,
        "coreMigrationVersion": "8.8.0",
        "typeMigrationVersion": "8.9.0",
    }


def saved_objects(prefix: str, params: Sequence[tuple[str, float | None]]) -> list[dict[str, Any]]:
    """The data view, the visualisations and the dashboard, in import order."""
    panels = [
        ng_rate_over_time(prefix),
        defects_by(prefix, "defect_locations", "Frames with defects by location", "defects-by-location"),
        defects_by(prefix, "defect_severities", "Frames with defects by severity", "defects-by-severity"),
        score_histogram(prefix),
        *(param_vs_ng(prefix, name, interval) for name, interval in params),
    ]
    return [data_view(prefix), *panels, dashboard(prefix, panels)]


def to_ndjson(objects: Sequence[dict[str, Any]]) -> str:
    return "".join(json.dumps(obj, ensure_ascii=False, sort_keys=True) + "\n" for obj in objects)


DEMO_PARAMS: tuple[tuple[str, float | None], ...] = (
    ("mould_temp_c", 1.0),
    ("injection_speed_mm_s", 2.0),
    ("hold_pressure_bar", 10.0),
    ("cycle_time_s", 0.2),
    ("return_water_temp_c", 0.5),
)
"""The demo line's parameters and bin widths (``deploy/kibana/linewatch.ndjson``)."""
