"""The cluster report: one self-contained HTML page, a section per defect cluster with its size,
when it was first and last seen, where on the part and on which cameras, and example thumbnails
(crops of the stored frames around the defect, the heat map over them; the heat map alone where
frames are not kept). Novel clusters come first."""

from __future__ import annotations

import base64
import html
import logging
from pathlib import Path

import cv2
import numpy as np

from schemas.defect import Defect
from schemas.inspection import Inspection
from services.analytics.clustering import ClusterRun, ClusterSummary, DefectRef
from services.storage.ports import BlobStore, RecordStore
from services.vision.images import decode_image
from services.vision.overlay import decode_heatmap, encode_png

log = logging.getLogger(__name__)

THUMB = 128
"""Thumbnail side in pixels."""

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222}
section{border:1px solid #ccc;border-radius:6px;padding:1em;margin:1em 0}
section.novel{border-color:#d9480f;background:#fff4e6}
.badge{background:#d9480f;color:#fff;border-radius:4px;padding:0 .4em;font-size:.8em}
figure{display:inline-block;margin:.3em;text-align:center;font-size:.75em}
figure img{width:128px;height:128px;image-rendering:pixelated;border:1px solid #999}
td,th{padding:.1em .6em;text-align:left}
"""


def thumbnail(inspection: Inspection, defect: Defect, blobs: BlobStore | None) -> bytes | None:
    """A PNG crop around ``defect``: the frame with the heat map blended in, or the heat map alone;
    None when neither is stored."""
    frame: np.ndarray | None = None
    heat: np.ndarray | None = None
    if blobs is not None and inspection.image is not None:
        try:
            frame = decode_image(blobs.get(inspection.image.uri), inspection.image.uri)
        except Exception as err:  # a frame gone from the blob store: the heat map still shows it
            log.debug("no frame for %s: %s", inspection.frame_id, err)
    if blobs is not None and inspection.heatmap is not None:
        try:
            heat = decode_heatmap(blobs.get(inspection.heatmap.uri))
        except Exception as err:
            log.debug("no heat map for %s: %s", inspection.frame_id, err)
    if frame is None and heat is None:
        return None
    if frame is not None:
        canvas = frame
    else:
        ref = inspection.image or inspection.heatmap
        height, width = (ref.height, ref.width) if ref is not None else heat.shape  # type: ignore[union-attr]
        canvas = np.full((height, width, 3), 128, np.uint8)
    if heat is not None:
        heat_full = cv2.resize(heat, (canvas.shape[1], canvas.shape[0]), interpolation=cv2.INTER_LINEAR)
        colour = cv2.cvtColor(
            cv2.applyColorMap((heat_full * 255).astype(np.uint8), cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB
        )
        weight = (0.45 * np.clip((heat_full - 0.3) / 0.5, 0, 1))[..., None]
        canvas = (canvas * (1 - weight) + colour * weight).astype(np.uint8)
    box = defect.bbox
    side = max(48, int(1.6 * max(box.width, box.height)))
    cx, cy = box.x + box.width // 2, box.y + box.height // 2
    x0, y0 = max(0, cx - side // 2), max(0, cy - side // 2)
    crop = canvas[y0 : y0 + side, x0 : x0 + side]
    if crop.size == 0:
        return None
    return encode_png(cv2.resize(crop, (THUMB, THUMB), interpolation=cv2.INTER_AREA))


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{html.escape(k)} {v}" for k, v in counts.items())


def _section(summary: ClusterSummary, records: RecordStore, blobs: BlobStore | None) -> str:
    figures = []
    for ref in summary.examples:
        figures.append(_figure(ref, records, blobs))
    badge = ' <span class="badge">novel</span>' if summary.novel else ""
    nearest = (
        f"<tr><th>nearest known</th><td>cluster {summary.nearest_known}"
        f" (cosine distance {summary.nearest_distance})</td></tr>"
        if summary.novel and summary.nearest_known is not None
        else ""
    )
    kind = "novel" if summary.novel else "known"
    return (
        f'<section class="{kind}"><h2>Cluster {summary.cluster_id}{badge}</h2>'
        f"<table><tr><th>defects</th><td>{summary.size}</td></tr>"
        f"<tr><th>first seen</th><td>{summary.first_seen:%Y-%m-%d %H:%M:%S} UTC</td></tr>"
        f"<tr><th>last seen</th><td>{summary.last_seen:%Y-%m-%d %H:%M:%S} UTC</td></tr>"
        f"<tr><th>where</th><td>{_counts(summary.locations)}</td></tr>"
        f"<tr><th>severity</th><td>{_counts(summary.severities)}</td></tr>"
        f"<tr><th>cameras</th><td>{_counts(summary.cameras)}</td></tr>{nearest}</table>"
        f"<div>{''.join(figures)}</div></section>"
    )


def _figure(ref: DefectRef, records: RecordStore, blobs: BlobStore | None) -> str:
    inspection = records.get_inspection(ref.frame_id)
    if inspection is None or ref.index >= len(inspection.defects):
        return ""
    defect = inspection.defects[ref.index]
    png = thumbnail(inspection, defect, blobs)
    caption = (
        f"{html.escape(inspection.camera_id)} {inspection.captured_at:%m-%d %H:%M:%S}"
        f"<br>{defect.severity} {defect.max_score:.2f}"
    )
    if png is None:
        return f"<figure><div>no image kept</div><figcaption>{caption}</figcaption></figure>"
    data = base64.b64encode(png).decode()
    title = html.escape(ref.frame_id)
    image = f'<img alt="defect" title="{title}" src="data:image/png;base64,{data}">'
    return f"<figure>{image}<figcaption>{caption}</figcaption></figure>"


def render_cluster_report(run: ClusterRun, records: RecordStore, blobs: BlobStore | None = None) -> str:
    """The report as one HTML page (thumbnails inlined)."""
    ordered = sorted(run.clusters, key=lambda c: (not c.novel, -c.size))
    novel = len(run.novel)
    head = (
        f"<h1>Defect clusters</h1><p>{run.defects} defects, {len(run.clusters)} clusters"
        f" ({novel} novel), {run.noise} in no cluster; reduced with {run.reducer}"
        f" in {run.seconds:.1f} s.</p>"
    )
    body = "".join(_section(summary, records, blobs) for summary in ordered)
    title = "<title>linewatch defect clusters</title>"
    page_head = f'<head><meta charset="utf-8">{title}<style>{_STYLE}</style></head>'
    return f"<!doctype html><html>{page_head}<body>{head}{body}</body></html>"


def write_cluster_report(
    run: ClusterRun, records: RecordStore, blobs: BlobStore | None, out_dir: Path
) -> Path:
    """Write ``index.html`` into ``out_dir`` (made if missing) and return its path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    page = out_dir / "index.html"
    page.write_text(render_cluster_report(run, records, blobs), encoding="utf-8")
    return page
