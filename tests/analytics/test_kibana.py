"""The Kibana saved objects in deploy/kibana/ parse, hang together, and use only fields the index
template defines (no Kibana can run here, so they are checked against the template and a real
index instead)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from services.analytics.kibana import DEMO_PARAMS, saved_objects, to_ndjson
from services.cli import main
from services.ingest.synthetic_records import synthetic_inspections
from services.storage.elasticsearch_layout import inspection_template
from services.storage.elasticsearch_record_store import ElasticsearchRecordStore

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "deploy" / "kibana" / "linewatch.ndjson"


def _fields(properties: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Field path → type, with nested fields marked 'nested:<type>'."""
    out: dict[str, str] = {}
    for name, spec in properties.items():
        path = f"{prefix}{name}"
        if "properties" in spec:
            inner = _fields(spec["properties"], f"{path}.")
            out.update({k: ("nested:" + v if spec.get("type") == "nested" else v) for k, v in inner.items()})
        else:
            out[path] = spec.get("type", "object")
    return out


def _referenced_fields(visualization: dict[str, Any]) -> set[str]:
    state = json.loads(visualization["attributes"]["visState"])
    fields = {agg["params"]["field"] for agg in state["aggs"] if "field" in agg.get("params", {})}
    params = state.get("params", {})
    for key in ("time_field",):
        if key in params:
            fields.add(params[key])
    for series in params.get("series", []):
        if series.get("terms_field"):
            fields.add(series["terms_field"])
    return fields


@pytest.fixture(scope="module")
def objects() -> list[dict[str, Any]]:
    return [json.loads(line) for line in COMMITTED.read_text(encoding="utf-8").splitlines()]


def test_the_committed_file_is_what_the_command_writes(tmp_path: Path) -> None:
    assert COMMITTED.read_text(encoding="utf-8") == to_ndjson(saved_objects("linewatch", DEMO_PARAMS))
    out = tmp_path / "k.ndjson"
    assert main(["kibana", "--prefix", "plant7", "--param", "melt_temp_c:2", "--out", str(out)]) == 0
    written = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert written[0]["attributes"]["title"] == "plant7-inspections-*"
    assert any("params.melt_temp_c" in o["attributes"].get("visState", "") for o in written)
    assert main(["kibana", "--param", "melt:wide"]) == 2


def test_objects_reference_each_other_and_the_template_fields(objects: list[dict[str, Any]]) -> None:
    ids = {(o["type"], o["id"]) for o in objects}
    assert len(ids) == len(objects)
    for obj in objects:
        for ref in obj["references"]:
            assert (ref["type"], ref["id"]) in ids, (obj["id"], ref)
    template = inspection_template("linewatch", "elasticsearch")
    fields = _fields(template["template"]["mappings"]["properties"])
    (view,) = [o for o in objects if o["type"] == "index-pattern"]
    assert [view["attributes"]["title"]] == template["index_patterns"]
    assert fields[view["attributes"]["timeFieldName"]] == "date"
    charted_params = set()
    for vis in (o for o in objects if o["type"] == "visualization"):
        for field in _referenced_fields(vis):
            if field.startswith("params."):
                charted_params.add(field.removeprefix("params."))  # mapped by the dynamic template
                continue
            assert field in fields, (vis["id"], field)
            assert not fields[field].startswith("nested:"), f"Kibana cannot aggregate nested {field}"
        state = json.loads(vis["attributes"]["visState"])
        if state["type"] == "metrics":
            assert state["params"]["index_pattern"] == view["attributes"]["title"]
    assert charted_params == {name for name, _ in DEMO_PARAMS}
    (board,) = [o for o in objects if o["type"] == "dashboard"]
    panels = json.loads(board["attributes"]["panelsJSON"])
    assert {p["panelRefName"] for p in panels} == {r["name"] for r in board["references"]}
    assert len(panels) == len([o for o in objects if o["type"] == "visualization"])


def test_a_real_index_has_every_charted_field(es_url: str, objects: list[dict[str, Any]]) -> None:
    """Records of the demo line in the store: every field a panel aggregates is in the index
    mapping with an aggregatable type."""
    with ElasticsearchRecordStore(es_url.replace("/lwt-", "/linewatch-")) as store:
        store.upsert_inspections(list(synthetic_inspections(50, seed=1)))
        mapping = store._es.indices.get_mapping(index=store.inspections)
    (index,) = mapping.body.values()
    fields = _fields(index["mappings"]["properties"])
    for vis in (o for o in objects if o["type"] == "visualization"):
        for field in _referenced_fields(vis):
            assert fields.get(field) in {"keyword", "double", "date", "integer", "long"}, (vis["id"], field)
