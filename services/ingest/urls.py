"""Open a frame or process source by URL, the way every linewatch setting names one.

Frame sources (query parameters ``camera``, ``recipe``, ``line``, ``station`` override the names
the line's settings give every frame):

- ``folder:///abs/dir`` or ``folder:rel/dir`` — image files; ``rate`` (frames/s), ``loop=1``
- ``video:///abs/file.mp4`` — a video file; ``rate``, ``start`` (ISO time of its first frame)
- ``camera://0`` — a USB camera by OpenCV index
- ``rtsp://host/stream`` — an RTSP stream, passed to OpenCV as is; put linewatch's own parameters
  in the fragment, which is never sent: ``rtsp://host/stream#camera=cam-2``
- ``synthetic://?seed=1`` — the synthetic moulding line; ``parts`` (default: forever), ``cameras``
  (comma separated), ``recipe`` (housing-A or cap-B, default housing-A), ``line``, ``station``,
  ``period`` (s between parts), ``drift``, ``size``, ``start`` (ISO time, default a fixed one),
  ``realtime=1``

Process sources:

- ``csv:///abs/process.csv`` or ``csv:rel/process.csv`` — replay (``line`` overrides the line id)
- ``simulator://?seed=1`` — the process behind ``synthetic://?seed=1`` (give both the same
  ``seed``, ``start``, ``drift`` and ``line``); ``machine``, ``samples`` (default: forever)
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import cast
from urllib.parse import SplitResult, parse_qsl, unquote, urlsplit

from services.adapters import load_adapter
from services.ingest.ports import FrameContext, FrameSource, ProcessSource

# scheme → the function below that opens it; each imports its adapter only when called
FRAME_SOURCES = {
    scheme: f"services.ingest.urls:_{name}"
    for scheme, name in (
        ("folder", "folder"),
        ("video", "video"),
        ("camera", "camera"),
        ("rtsp", "rtsp"),
        ("rtsps", "rtsp"),
        ("synthetic", "synthetic"),
    )
}
PROCESS_SOURCES = {"csv": "services.ingest.urls:_csv", "simulator": "services.ingest.urls:_simulator"}
CONTEXT_PARAMS = {"camera": "camera_id", "recipe": "recipe", "line": "line_id", "station": "station_id"}
TRUE = ("1", "true", "yes", "on")


def _params(text: str, url: str, allowed: set[str]) -> dict[str, str]:
    params = dict(parse_qsl(text, keep_blank_values=True))
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise ValueError(f"{url!r}: unknown parameter(s) {unknown}; known: {', '.join(sorted(allowed))}")
    return params


def _path(parts: SplitResult, url: str) -> Path:
    if parts.netloc not in ("", "localhost"):
        raise ValueError(
            f"{url!r} names host {parts.netloc!r}; write {parts.scheme}:///abs/path or {parts.scheme}:rel"
        )
    if not parts.path:
        raise ValueError(f"{url!r} has no path")
    return Path(unquote(parts.path))


def _context(context: FrameContext, params: dict[str, str]) -> FrameContext:
    return replace(context, **{field: params[key] for key, field in CONTEXT_PARAMS.items() if key in params})


def _rate(params: dict[str, str]) -> float | None:
    return float(params["rate"]) if "rate" in params else None


def _start(params: dict[str, str]) -> datetime | None:
    if "start" not in params:
        return None
    start = datetime.fromisoformat(params["start"])
    if start.tzinfo is None:
        raise ValueError(f"start {params['start']!r} needs a timezone, e.g. 2025-03-04T08:00:00Z")
    return start


def _drift(params: dict[str, str]) -> str | None:
    return params.get("drift") or None


def open_frame_source(url: str, context: FrameContext | None = None) -> FrameSource:
    """The frame source named by ``url``; ``context`` gives the names its frames carry by default."""
    opener = load_adapter(FRAME_SOURCES, url, "frame source", "folder:///data/frames")
    return cast(FrameSource, opener(urlsplit(url), url, context or FrameContext()))


def _folder(parts: SplitResult, url: str, context: FrameContext) -> FrameSource:
    from services.ingest.folder import FolderSource

    params = _params(parts.query, url, {*CONTEXT_PARAMS, "rate", "loop"})
    loop = params.get("loop", "0").lower() in TRUE
    return FolderSource(_path(parts, url), _context(context, params), _rate(params), loop)


def _video(parts: SplitResult, url: str, context: FrameContext) -> FrameSource:
    from services.ingest.video import VideoSource

    params = _params(parts.query, url, {*CONTEXT_PARAMS, "rate", "start"})
    return VideoSource(_path(parts, url), _context(context, params), _rate(params), _start(params))


def _camera(parts: SplitResult, url: str, context: FrameContext) -> FrameSource:
    from services.ingest.video import VideoSource

    params = _params(parts.query, url, {*CONTEXT_PARAMS, "rate"})
    if not parts.netloc.isdigit():
        raise ValueError(f"{url!r}: expected a camera index, e.g. camera://0")
    return VideoSource(int(parts.netloc), _context(context, params), _rate(params))


def _rtsp(parts: SplitResult, url: str, context: FrameContext) -> FrameSource:
    from services.ingest.video import VideoSource

    params = _params(parts.fragment, url, set(CONTEXT_PARAMS))
    return VideoSource(url.partition("#")[0], _context(context, params))


def _synthetic(parts: SplitResult, url: str, context: FrameContext) -> FrameSource:
    from services.ingest.synthetic_source import SyntheticSource

    allowed = {*CONTEXT_PARAMS, "seed", "parts", "cameras", "period", "drift", "size", "start", "realtime"}
    params = _params(parts.query, url, allowed)
    return SyntheticSource(
        seed=int(params.get("seed", "0")),
        parts=int(params["parts"]) if "parts" in params else None,
        realtime=params.get("realtime", "0").lower() in TRUE,
        station_id=params.get("station", context.station_id),
        camera_ids=params.get("cameras", params.get("camera", context.camera_id)).split(","),
        recipe=params.get("recipe", "housing-A"),  # the synthetic line makes its own recipes only
        frame_period_s=float(params.get("period", "0.5")),
        size=int(params.get("size", "256")),
        line_id=params.get("line", context.line_id),
        start=_start(params),
        drift=_drift(params),
    )


def open_process_source(url: str, line_id: str = "line-1") -> ProcessSource:
    """The process source named by ``url``; its samples belong to ``line_id`` unless ``line`` says."""
    opener = load_adapter(PROCESS_SOURCES, url, "process source", "csv:///data/process.csv")
    return cast(ProcessSource, opener(urlsplit(url), url, line_id))


def _csv(parts: SplitResult, url: str, line_id: str) -> ProcessSource:
    from services.ingest.csv_replay import CsvProcessSource

    params = _params(parts.query, url, {"line"})
    return CsvProcessSource(_path(parts, url), params.get("line", line_id))


def _simulator(parts: SplitResult, url: str, line_id: str) -> ProcessSource:
    from services.ingest.simulator_source import SimulatorSource
    from services.ingest.synthetic import SyntheticLine

    params = _params(parts.query, url, {"seed", "line", "machine", "samples", "start", "drift"})
    seed, line_id = int(params.get("seed", "0")), params.get("line", line_id)
    line = SyntheticLine(seed=seed, line_id=line_id, start=_start(params), drift=_drift(params))
    samples = int(params["samples"]) if "samples" in params else None
    return SimulatorSource(line.process, line.line_id, params.get("machine", line.machine_id), samples)
