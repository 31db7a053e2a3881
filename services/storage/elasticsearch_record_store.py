"""RecordStore and AnalyticsStore adapter on Elasticsearch (the official ``elasticsearch`` client).

URL: ``http(s)://[USER:PASSWORD@]HOST:9200[/PREFIX]?OPTIONS``. The path names the index prefix
(default ``linewatch``). Options:

* ``refresh=false|true|wait_for`` (default false): whether a write waits until it is searchable.
  By default records become searchable within the index refresh interval (1 s).
* ``retry_s=60``: how long a write keeps retrying while the server is unreachable, overloaded
  (429/5xx) or refuses writes (a cluster block, e.g. a full disk) before it raises
  :class:`RecordStoreUnavailable`; callers then wait and send the same records again.
* ``timeout_s=30``: one request's timeout.
* ``ca_certs=PATH``, ``verify_certs=false``: TLS. An API key comes from the environment variable
  ``LINEWATCH_ES_API_KEY`` (never from the URL, which lands in logs); a user and password may be
  in the URL (or ``LINEWATCH_ES_PASSWORD`` for the password).
* ``flavour=elasticsearch|opensearch`` (default: what the server says it is): the vector type of
  defect embeddings; ``embedding_dims=N`` indexes them.

The client sends plain ``application/json``: Elasticsearch 8 accepts it and OpenSearch-compatible
servers (the test server among them) require it. Writes are idempotent (``_id`` is the frame id,
the alert id, or a dead letter's once-key) but not atomic across records: a group that fails half
way is simply sent again.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Sequence
from typing import Any, cast
from urllib.parse import parse_qs, unquote, urlsplit

from schemas.alert import Alert
from schemas.dead_letter import DeadLetter, reason_code
from schemas.inspection import Inspection
from services.storage import elasticsearch_layout as layout
from services.storage.analytics_query import (
    AnalyticsQuery,
    Counts,
    GroupBy,
    GroupKey,
    QueryError,
    ResultRow,
    rows_from_counts,
)
from services.storage.errors import RecordStoreUnavailable
from services.storage.ports import ParamStats
from services.storage.query import InspectionQuery, NgRateBucket
from services.storage.sqlite_sql import from_us

log = logging.getLogger(__name__)

RETRIABLE_STATUS = frozenset({403, 408, 409, 429, 500, 502, 503, 504})
"""Item statuses worth sending again: overload, a write block (a full disk), a timeout."""


def _json_node_class() -> type:
    from elastic_transport import Urllib3HttpNode

    class JsonHttpNode(Urllib3HttpNode):
        """Sends ``application/json`` instead of Elasticsearch's compatibility media type."""

        def perform_request(  # type: ignore[override]
            self, method: str, target: str, body: Any = None, headers: Any = None, **kw: Any
        ) -> Any:
            if headers is not None:
                headers = headers.copy()
                for name in ("accept", "content-type"):
                    value = headers.get(name)
                    if value and "vnd.elasticsearch" in value:
                        headers[name] = "application/x-ndjson" if "x-ndjson" in value else "application/json"
            return super().perform_request(method, target, body=body, headers=headers, **kw)

    return JsonHttpNode


class ElasticsearchRecordStore:
    """Inspections, dead letters and alerts in Elasticsearch; analytics as aggregations."""

    def __init__(self, url: str) -> None:
        from elasticsearch import Elasticsearch

        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"expected http(s)://HOST:9200[/PREFIX], got {url!r}")
        options = {key: values[-1] for key, values in parse_qs(parts.query).items()}
        known = {"refresh", "retry_s", "timeout_s", "ca_certs", "verify_certs", "flavour", "embedding_dims"}
        if unknown := sorted(set(options) - known):
            raise ValueError(
                f"unknown Elasticsearch URL options {unknown}; known: {', '.join(sorted(known))}"
            )
        self.prefix = parts.path.strip("/") or "linewatch"
        if not self.prefix.islower() or "/" in self.prefix:
            raise ValueError(f"the index prefix {self.prefix!r} must be one lower-case path segment")
        self.refresh = options.get("refresh", "false")
        if self.refresh not in ("false", "true", "wait_for"):
            raise ValueError(f"refresh must be false, true or wait_for, got {self.refresh!r}")
        self.retry_s = float(options.get("retry_s", 60))
        port = parts.port or 9200
        host = f"{parts.scheme}://{parts.hostname}:{port}"
        self.url = host + (f"/{self.prefix}" if parts.path.strip("/") else "")  # no credentials
        auth: dict[str, Any] = {}
        if api_key := os.environ.get("LINEWATCH_ES_API_KEY"):
            auth["api_key"] = api_key
        elif parts.username:
            password = unquote(parts.password or os.environ.get("LINEWATCH_ES_PASSWORD", ""))
            auth["basic_auth"] = (unquote(parts.username), password)
        tls: dict[str, Any] = {}
        if "ca_certs" in options:
            tls["ca_certs"] = options["ca_certs"]
        if options.get("verify_certs", "true") == "false":
            tls["verify_certs"] = False
        self._es = Elasticsearch(
            host,
            node_class=_json_node_class(),
            request_timeout=float(options.get("timeout_s", 30)),
            max_retries=0,  # this store retries, with back-off and a deadline
            **auth,
            **tls,
        )
        flavour = options.get("flavour")
        self._flavour: layout.Flavour | None = cast(layout.Flavour, flavour) if flavour else None
        if flavour not in (None, "elasticsearch", "opensearch"):
            raise ValueError(f"flavour must be elasticsearch or opensearch, got {flavour!r}")
        self._embedding_dims = int(options.get("embedding_dims", 0))
        self._templates_ready = False
        self.inspections = f"{self.prefix}-inspections-*"
        self.alerts = f"{self.prefix}-alerts"
        self.dead_letters = f"{self.prefix}-dead-letters"

    # ------------------------------------------------------------------------------- lifecycle

    def close(self) -> None:
        self._es.close()

    def __enter__(self) -> ElasticsearchRecordStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def flavour(self) -> layout.Flavour:
        if self._flavour is None:
            info = self._call(self._es.info)
            distribution = info["version"].get("distribution", "elasticsearch")
            self._flavour = "opensearch" if distribution == "opensearch" else "elasticsearch"
        return self._flavour

    def ensure_templates(self) -> None:
        """Put the index templates (idempotent; a newer layout applies to indices made from now on)."""
        if self._templates_ready:
            return
        templates = {
            f"{self.prefix}-inspections": layout.inspection_template(
                self.prefix, self.flavour(), self._embedding_dims
            ),
            f"{self.prefix}-alerts": layout.simple_template(self.prefix, "alerts", layout.ALERT_PROPERTIES),
            f"{self.prefix}-dead-letters": layout.simple_template(
                self.prefix, "dead-letters", layout.DEAD_LETTER_PROPERTIES
            ),
        }
        for name, body in templates.items():
            self._call(lambda n=name, b=body: self._es.indices.put_index_template(name=n, **b))
        self._templates_ready = True

    def refresh_now(self) -> None:
        """Make everything written so far searchable (tests; a report that must see the last record)."""
        self._call(lambda: self._es.indices.refresh(index=f"{self.prefix}-*", allow_no_indices=True))

    # ------------------------------------------------------------------------------- writes

    def upsert_inspection(self, inspection: Inspection) -> None:
        self.upsert_inspections([inspection])

    def upsert_inspections(self, inspections: Sequence[Inspection]) -> None:
        """Index the records (``_id`` = frame id), retrying what the server cannot take now."""
        if not inspections:
            return
        self.ensure_templates()
        actions = {
            inspection.frame_id: (
                {
                    "index": {
                        "_index": layout.inspections_index(self.prefix, inspection),
                        "_id": inspection.frame_id,
                    }
                },
                layout.inspection_document(inspection, self._embedding_dims),
            )
            for inspection in inspections
        }
        self._bulk(actions)

    def _bulk(self, actions: dict[str, tuple[dict[str, Any], dict[str, Any]]]) -> None:
        """Send the actions until each is stored; rejected items that a retry cannot fix raise
        ValueError (after the others are stored), the server away past ``retry_s`` raises
        RecordStoreUnavailable."""
        pending = dict(actions)
        deadline = time.monotonic() + self.retry_s
        wait = 0.2
        while True:
            operations: list[dict[str, Any]] = []
            for head, body in pending.values():
                operations += [head, body]
            try:
                response = self._es.bulk(operations=operations, refresh=self.refresh)
                failed = self._failed_items(response)
            except Exception as err:
                if not _transient(err):
                    raise
                failed = {key: (503, f"{type(err).__name__}: {err}") for key in pending}
            retry = {key: pending[key] for key, (code, _) in failed.items() if code in RETRIABLE_STATUS}
            fatal = {key: reason for key, (code, reason) in failed.items() if code not in RETRIABLE_STATUS}
            if not retry:
                if fatal:
                    first = next(iter(fatal.items()))
                    raise ValueError(
                        f"Elasticsearch refused {len(fatal)} records, e.g. {first[0]}: {first[1]}"
                    )
                return
            if time.monotonic() + wait > deadline:
                reason = next(iter(failed.values()))[1]
                raise RecordStoreUnavailable(
                    f"Elasticsearch at {self.url} did not take {len(retry)} records within "
                    f"{self.retry_s:g} s: {reason}"
                )
            log.warning("Elasticsearch did not take %d records (%s); retrying in %.1f s", len(retry),
                        next(iter(failed.values()))[1], wait)  # fmt: skip
            time.sleep(wait)
            wait = min(wait * 2, 5.0)
            pending = retry

    @staticmethod
    def _failed_items(response: Any) -> dict[str, tuple[int, str]]:
        if not response.get("errors"):
            return {}
        failed = {}
        for item in response["items"]:
            (result,) = item.values()
            if "error" in result:
                error = result["error"]
                reason = (
                    f"{error.get('type')}: {error.get('reason')}" if isinstance(error, dict) else str(error)
                )
                failed[result["_id"]] = (int(result.get("status", 500)), reason)
        return failed

    def add_alert(self, alert: Alert) -> None:
        """Store an alert; the same ``alert_id`` again replaces it."""
        self.ensure_templates()
        self._bulk({alert.alert_id: ({"index": {"_index": self.alerts, "_id": alert.alert_id}},
                                     layout.alert_document(alert))})  # fmt: skip

    def add_dead_letter(self, dead_letter: DeadLetter) -> bool:
        """False when this frame's letter from this step for this reason code is stored already."""
        from elasticsearch import ConflictError

        self.ensure_templates()
        letter = dead_letter
        if letter.frame_id:
            once = f"{letter.frame_id}|{letter.source}|{reason_code(letter)}"
            doc_id = str(uuid.uuid5(uuid.NAMESPACE_URL, once))
        else:
            doc_id = str(uuid.uuid4())
        document = layout.dead_letter_document(letter, time.time_ns())
        try:
            self._call(
                lambda: self._es.create(
                    index=self.dead_letters, id=doc_id, document=document, refresh=self.refresh
                )
            )
        except ConflictError:
            return False
        return True

    # ------------------------------------------------------------------------------- reads

    def get_inspection(self, frame_id: str) -> Inspection | None:
        response = self._search(
            self.inspections, query={"ids": {"values": [frame_id.lower()]}}, size=1, source=["record"]
        )
        hits = response["hits"]["hits"]
        return Inspection.model_validate(hits[0]["_source"]["record"]) if hits else None

    def query_inspections(self, filters: InspectionQuery | None = None) -> list[Inspection]:
        filters = filters or InspectionQuery()
        response = self._search(
            self.inspections,
            query=layout.filter_query(filters),
            sort=[{"captured_at_us": "desc"}, {"frame_id": "desc"}],
            from_=filters.offset,
            size=filters.limit,
            source=["record"],
        )
        return [Inspection.model_validate(hit["_source"]["record"]) for hit in response["hits"]["hits"]]

    def count_inspections(self, filters: InspectionQuery | None = None) -> int:
        query = layout.filter_query(filters or InspectionQuery())
        response = self._call(
            lambda: self._es.count(
                index=self.inspections, query=query, allow_no_indices=True, ignore_unavailable=True
            )
        )
        return int(response["count"])

    def ng_rate(self, bucket_s: int, filters: InspectionQuery | None = None) -> list[NgRateBucket]:
        if bucket_s <= 0:
            raise ValueError(f"bucket_s must be a positive number of seconds, got {bucket_s}")
        step = bucket_s * 1_000_000
        aggs = {
            "t": {
                "histogram": {"field": "captured_at_us", "interval": step, "min_doc_count": 1},
                "aggs": {
                    "line": {
                        "terms": {"field": "line_id", "size": layout.TERMS_SIZE},
                        "aggs": {
                            "camera": {
                                "terms": {"field": "camera_id", "size": layout.TERMS_SIZE},
                                "aggs": {"ng": layout.MEASURE_AGGS["ng"]},
                            }
                        },
                    }
                },
            }
        }
        response = self._search(
            self.inspections, query=layout.filter_query(filters or InspectionQuery()), size=0, aggs=aggs
        )
        out = []
        for t in response.get("aggregations", {}).get("t", {}).get("buckets", []):
            for line in t["line"]["buckets"]:
                for camera in line["camera"]["buckets"]:
                    out.append(NgRateBucket(from_us(int(t["key"])), line["key"], camera["key"],
                                            camera["doc_count"], camera["ng"]["doc_count"]))  # fmt: skip
        return sorted(out, key=lambda b: (b.bucket_start, b.line_id, b.camera_id))

    def list_dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        response = self._search(
            self.dead_letters,
            sort=[{"failed_at_us": "desc"}, {"seq": "desc"}],
            size=_check(limit),
            source=["record"],
        )
        return [DeadLetter.model_validate(hit["_source"]["record"]) for hit in response["hits"]["hits"]]

    def count_dead_letters(self) -> int:
        return int(
            self._call(lambda: self._es.count(index=self.dead_letters, ignore_unavailable=True))["count"]
        )

    def list_alerts(self, limit: int = 100) -> list[Alert]:
        response = self._search(
            self.alerts,
            sort=[{"raised_at_us": "desc"}, {"alert_id": "desc"}],
            size=_check(limit),
            source=["record"],
        )
        return [Alert.model_validate(hit["_source"]["record"]) for hit in response["hits"]["hits"]]

    # ------------------------------------------------------------------------------- analytics

    def aggregate(self, query: AnalyticsQuery) -> list[ResultRow]:
        """The analytics query as one aggregation request (see ``elasticsearch_layout``)."""
        tree: dict[str, Any] = dict(layout.MEASURE_AGGS)
        for group in reversed(query.group_by):
            tree = {"g": layout.group_aggregation(group, tree)}
        response = self._search(
            self.inspections,
            query=layout.filter_query(query.filters),
            size=0,
            aggs=tree,
            track_total_hits=True,
        )
        counts: dict[tuple[GroupKey, ...], Counts] = {}
        aggregations = response.get("aggregations")
        if aggregations is None:  # no index yet
            return []
        if not query.group_by:
            total = response["hits"]["total"]["value"]
            counts[()] = _counts(aggregations, total)
        else:
            self._walk(query.group_by, aggregations["g"], (), counts)
        return rows_from_counts(query, counts)

    def _walk(
        self,
        groups: Sequence[GroupBy],
        node: dict[str, Any],
        keys: tuple[GroupKey, ...],
        counts: dict[tuple[GroupKey, ...], Counts],
    ) -> None:
        group, rest = groups[0], groups[1:]
        if group.kind == "defect":
            node = node["g"]
        if node.get("sum_other_doc_count"):
            raise QueryError(f"more than {layout.TERMS_SIZE} groups of {group.field}: filter first")
        for bucket in node["buckets"]:
            inner = bucket["frames"] if group.kind == "defect" else bucket
            if inner["doc_count"] == 0:
                continue
            key = (*keys, _bucket_key(group, bucket))
            if rest:
                self._walk(rest, inner["g"], key, counts)
            else:
                counts[key] = _counts(inner, inner["doc_count"])

    def parameter_stats(self, filters: InspectionQuery | None = None) -> dict[str, ParamStats]:
        query = layout.filter_query(filters or InspectionQuery())
        names_aggs = {"names": {"terms": {"field": "param_names", "size": layout.TERMS_SIZE}}}
        response = self._search(self.inspections, query=query, size=0, aggs=names_aggs)
        names = [b["key"] for b in response.get("aggregations", {}).get("names", {}).get("buckets", [])]
        if not names:
            return {}
        stats_aggs = {f"p{i}": {"stats": {"field": layout.param_field(name)}} for i, name in enumerate(names)}
        response = self._search(self.inspections, query=query, size=0, aggs=stats_aggs)
        out = {}
        for i, name in enumerate(names):
            stats = response["aggregations"][f"p{i}"]
            if stats["count"]:
                out[name] = ParamStats(int(stats["count"]), stats["min"], stats["max"], stats["avg"])
        return out

    # ------------------------------------------------------------------------------- plumbing

    def _search(self, index: str, **body: Any) -> Any:
        return self._call(
            lambda: self._es.search(index=index, allow_no_indices=True, ignore_unavailable=True, **body)
        )

    def _call(self, request: Any) -> Any:
        """One request, retried while the server is away, up to ``retry_s``."""
        deadline = time.monotonic() + self.retry_s
        wait = 0.2
        while True:
            try:
                return request()
            except Exception as err:
                if not _transient(err):
                    raise
                if time.monotonic() + wait > deadline:
                    raise RecordStoreUnavailable(
                        f"Elasticsearch at {self.url} is unavailable: {err}"
                    ) from err
                time.sleep(wait)
                wait = min(wait * 2, 5.0)


def _transient(err: Exception) -> bool:
    """A connection failure, a timeout, or an answer that says 'later' (429, 5xx)."""
    from elastic_transport import ConnectionError as TransportConnectionError
    from elastic_transport import ConnectionTimeout
    from elasticsearch import ApiError

    if isinstance(err, TransportConnectionError | ConnectionTimeout):
        return True
    return isinstance(err, ApiError) and err.meta.status in (429, 502, 503, 504)


def _counts(node: dict[str, Any], frames: int) -> Counts:
    return Counts(
        frames=int(frames),
        ng=int(node["ng"]["doc_count"]),
        score_sum=float(node["score_sum"]["value"] or 0.0),
        defect_area_sum=float(node["area_sum"]["value"] or 0.0),
    )


def _bucket_key(group: GroupBy, bucket: dict[str, Any]) -> GroupKey:
    if group.kind == "time":
        return from_us(int(bucket["key"]))
    if group.kind == "param":
        if group.width is not None:
            low = float(bucket["key"])
            return (low, low + group.width)
        return (bucket.get("from"), bucket.get("to"))
    if group.field == "cluster_id":
        return int(bucket["key"])
    return str(bucket["key"])


def _check(limit: int) -> int:
    if limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    return limit
