"""Inspection reports: one self-contained HTML page per inspection or per time range.

A section per inspection: the overlay (heat map over the frame, defects boxed; over grey where the
frame is no longer kept), the defects, the process snapshot, and its **most telling parameters**:
the values of this frame that lie in a risky range of the root-cause ranking (e.g. "mould_temp_c
54.1 — in the range < 56, where the NG rate is 3.7x"). A range report adds the period's counts and
the ranking itself, then the highest-scoring NG inspections. Print it to PDF from a browser; no PDF
library is needed on the line PC.
"""

from __future__ import annotations

import base64
import html
import logging
from collections.abc import Sequence
from datetime import timedelta
from typing import cast

from schemas.inspection import Inspection
from services.analytics.causes import Cause, CauseReport
from services.analytics.run import run_causes
from services.api.thumbnails import frame_pixels, overlay_of, shrink
from services.storage.ports import AnalyticsStore, BlobStore, RecordStore
from services.storage.query import InspectionQuery
from services.vision.overlay import decode_heatmap, encode_png

log = logging.getLogger(__name__)

OVERLAY_SIDE = 640
"""Overlays are drawn at most this many pixels on their longer side."""

CAUSE_WINDOW = timedelta(days=7)
"""A single inspection's telling parameters come from the ranking over this period before it."""

MAX_INSPECTIONS = 20
"""A range report shows at most this many inspections (the highest-scoring NG ones)."""

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;color:#1d2329;max-width:1100px}
section{border:1px solid #d9dee3;border-radius:6px;padding:1em;margin:1em 0;page-break-inside:avoid}
.ng{color:#c62828;font-weight:700}.ok{color:#1a7f37;font-weight:700}
table{border-collapse:collapse;margin:.5em 0}
td,th{padding:.15em .7em;text-align:left;border-bottom:1px solid #eee}
.cols{display:flex;gap:1.5em;flex-wrap:wrap}img{max-width:520px;border:1px solid #999}
.telling{background:#fff4e6}
"""


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def telling_parameters(inspection: Inspection, causes: Sequence[Cause]) -> list[tuple[str, float, Cause]]:
    """The frame's parameter values that lie in the risky range of a cause (or of a parameter
    explained by one), strongest first."""
    found = []
    for cause in causes:
        if cause.status == "weak":
            continue
        value = inspection.process.params.get(cause.param)
        if value is None:
            continue
        inside = value < cause.threshold if cause.side == "<" else value >= cause.threshold
        if inside:
            found.append((cause.param, value, cause))
    return found


def overlay_png(inspection: Inspection, blobs: BlobStore) -> bytes | None:
    if inspection.heatmap is None:
        return None
    try:
        heatmap = decode_heatmap(blobs.get(inspection.heatmap.uri))
    except (FileNotFoundError, ValueError):
        return None
    frame = frame_pixels(blobs, inspection, OVERLAY_SIDE)
    return encode_png(shrink(overlay_of(inspection, heatmap, frame, OVERLAY_SIDE), OVERLAY_SIDE))


def inspection_section(inspection: Inspection, blobs: BlobStore, causes: Sequence[Cause]) -> str:
    verdict = f'<span class="{inspection.verdict.lower()}">{inspection.verdict}</span>'
    title = html.escape(inspection.part_id or inspection.frame_id)
    png = overlay_png(inspection, blobs)
    image = (
        f'<img alt="overlay" src="data:image/png;base64,{base64.b64encode(png).decode()}">'
        if png is not None
        else "<p>No heat map stored.</p>"
    )
    facts = _table(
        ("", ""),
        [
            ("frame", inspection.frame_id),
            ("line / camera", f"{inspection.line_id} / {inspection.camera_id}"),
            ("recipe", inspection.recipe),
            ("captured", f"{inspection.captured_at:%Y-%m-%d %H:%M:%S} UTC"),
            ("score", f"{inspection.score:.3f} (NG from 0.5)"),
            ("model", f"{inspection.model_name} {inspection.model_version}"),
        ],
    )
    defects = (
        _table(
            ("#", "severity", "where", "max score", "area px", "cluster"),
            [
                (
                    i + 1,
                    d.severity,
                    d.location,
                    f"{d.max_score:.2f}",
                    d.area_px,
                    "–" if d.cluster_id is None else d.cluster_id,
                )
                for i, d in enumerate(inspection.defects)
            ],
        )
        if inspection.defects
        else "<p>No defects.</p>"
    )
    telling = telling_parameters(inspection, causes)
    telling_names = {name for name, _, _ in telling}
    process = inspection.process
    params = "".join(
        f'<tr class="{"telling" if name in telling_names else ""}">'
        f"<td>{html.escape(name)}</td><td>{value:g}</td></tr>"
        for name, value in sorted(process.params.items())
    )
    process_html = (
        f"<p>process data: {process.status}"
        + (f", {process.age_s:.1f} s old" if process.age_s is not None else "")
        + f"</p><table>{params}</table>"
    )
    telling_html = (
        "<ul>"
        + "".join(
            f"<li><b>{html.escape(name)} {value:g}</b> — in the range"
            f" {html.escape(cause.side)} {cause.threshold:g}, where the NG rate is {cause.rate_ratio:.1f}x"
            f" ({cause.status}"
            + (f", explained by {html.escape(cause.explained_by)}" if cause.explained_by else "")
            + ")</li>"
            for name, value, cause in telling
        )
        + "</ul>"
        if telling
        else "<p>No parameter of this frame lies in a risky range of the ranking.</p>"
    )
    return (
        f"<section><h2>{title} {verdict}</h2><div class='cols'><div>{image}</div><div>{facts}"
        f"<h3>Defects</h3>{defects}</div></div><div class='cols'><div><h3>Process</h3>{process_html}</div>"
        f"<div><h3>Most telling parameters</h3>{telling_html}</div></div></section>"
    )


def _causes(records: RecordStore, filters: InspectionQuery) -> CauseReport | None:
    if not hasattr(records, "aggregate"):
        return None
    try:
        return run_causes(cast(AnalyticsStore, records), filters)
    except Exception as err:  # a report without the ranking is still a report
        log.warning("no root-cause ranking for the report: %s", err)
        return None


def _page(title: str, body: str) -> str:
    head = f'<head><meta charset="utf-8"><title>{html.escape(title)}</title><style>{_STYLE}</style></head>'
    return f"<!doctype html><html>{head}<body><h1>{html.escape(title)}</h1>{body}</body></html>"


def inspection_report(records: RecordStore, blobs: BlobStore, inspection: Inspection) -> str:
    """The report of one inspection; its telling parameters come from the ranking over the week
    before it on its line."""
    filters = InspectionQuery(
        line_id=inspection.line_id,
        captured_from=inspection.captured_at - CAUSE_WINDOW,
        captured_to=inspection.captured_at + timedelta(seconds=1),
    )
    report = _causes(records, filters)
    causes = report.causes if report is not None else []
    return _page(
        f"Inspection {inspection.part_id or inspection.frame_id}",
        inspection_section(inspection, blobs, causes),
    )


def range_report(
    records: RecordStore, blobs: BlobStore, filters: InspectionQuery, max_inspections: int = MAX_INSPECTIONS
) -> str:
    """The report of a period: counts, the root-cause ranking, the highest-scoring NG inspections."""
    total = records.count_inspections(filters)
    ng_filters = filters.model_copy(update={"verdict": "NG", "limit": 1000, "offset": 0})
    ng = records.count_inspections(ng_filters)
    worst = sorted(records.query_inspections(ng_filters), key=lambda i: -i.score)[:max_inspections]
    report = _causes(records, filters)
    causes = report.causes if report is not None else []
    span = " to ".join(
        f"{moment:%Y-%m-%d %H:%M} UTC"
        for moment in (filters.captured_from, filters.captured_to)
        if moment is not None
    )
    scope = ", ".join(
        f"{name} {value}"
        for name, value in (
            ("line", filters.line_id),
            ("camera", filters.camera_id),
            ("recipe", filters.recipe),
        )
        if value
    )
    where = html.escape((span or "all records") + (" — " + scope if scope else ""))
    summary = f"<p>{where}: {total} frames, {ng} NG ({(ng / total if total else 0):.1%}).</p>"
    ranking = (
        "<h2>What goes with NG parts</h2>"
        + _table(("#", "status", "finding"), [(i + 1, c.status, c.sentence()) for i, c in enumerate(causes)])
        if causes
        else "<p>No root-cause ranking (no parameter separates NG from OK here).</p>"
    )
    shown = (
        f"<h2>The {len(worst)} highest-scoring NG inspections</h2>" if worst else "<p>No NG inspections.</p>"
    )
    sections = "".join(inspection_section(inspection, blobs, causes) for inspection in worst)
    return _page("Inspection report", summary + ranking + shown + sections)
