"""Defect clustering and unknown-defect discovery.

Every defect a PatchCore model finds carries an embedding: the residual features inside its region
(its patches' features minus those of their nearest good patches, averaged over the region and
scaled to unit length; :func:`services.vision.defects.region_embedding`). Defects of one kind get
similar residuals wherever they sit on the part. A clustering run:

1. reads the defects of the NG frames in a time range (newest first, at most ``max_defects``);
2. reduces their embeddings with UMAP (cosine metric; PCA when asked, or for a handful of
   defects) and groups them with scikit-learn's HDBSCAN; defects in no dense group are noise;
3. keeps cluster ids stable: a group whose defects mostly had an id keeps that id; a group with
   no id yet takes the id of the nearest known cluster when their centroids (in embedding space)
   are within ``match_distance`` (cosine), and otherwise gets a new id and is **novel** — a kind
   of defect not seen before (the first run, with nothing known, sets the baseline: nothing is
   novel then);
4. writes the ids back into the records (upserts by frame id, so both stores take them) and
   raises one ``novel_defect_cluster`` alert per novel cluster.

The known clusters are the records themselves: no catalogue to lose or keep in step.
:class:`PeriodicClustering` runs it in the background of either runtime.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal, cast

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, JsonValue
from tqdm import tqdm

from schemas.alert import Alert
from schemas.ids import new_uuid7
from schemas.inspection import Inspection
from services.storage.ports import RecordStore
from services.storage.query import InspectionQuery

log = logging.getLogger(__name__)

PAGE = 2000
"""Records read per query while collecting defects."""

WRITE_CHUNK = 500
"""Records written back per upsert."""

MIN_FOR_UMAP = 50
"""Below this many defects UMAP's neighbourhood graph means little: PCA is used instead."""


class ClusterSettings(BaseModel):
    """The ``clustering:`` section of the settings and the options of ``linewatch cluster``."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(default=True, description="Run clustering periodically on the line")
    every_s: float = Field(default=600.0, gt=0, description="Seconds between periodic runs")
    min_new_defects: int = Field(
        default=50, ge=1, description="A periodic run starts only after this many new defects"
    )
    max_defects: int = Field(default=20_000, ge=2, description="The newest defects a run reads")
    reducer: Literal["umap", "pca"] = "umap"
    components: int = Field(default=5, ge=2, description="Dimensions the embeddings are reduced to")
    neighbours: int = Field(default=15, ge=2, description="UMAP's n_neighbors")
    min_cluster_size: int = Field(default=10, ge=2, description="HDBSCAN's smallest cluster")
    match_distance: float = Field(
        default=0.2,
        gt=0,
        le=2,
        description="Cosine distance between centroids under which a new group is a known cluster",
    )
    seed: int = 0


@dataclass(frozen=True)
class DefectRef:
    """One defect of one stored inspection."""

    frame_id: str
    index: int


@dataclass
class DefectSet:
    """The defects a run clusters: references, unit embeddings (N, D) and their current ids."""

    refs: list[DefectRef]
    embeddings: np.ndarray
    cluster_ids: list[int | None]
    inspections: dict[str, Inspection]

    def __len__(self) -> int:
        return len(self.refs)


@dataclass
class ClusterSummary:
    """One cluster after a run."""

    cluster_id: int
    size: int
    novel: bool
    first_seen: datetime
    last_seen: datetime
    locations: dict[str, int]
    severities: dict[str, int]
    cameras: dict[str, int]
    nearest_known: int | None  # for a novel cluster: the closest known one and its distance
    nearest_distance: float | None
    examples: list[DefectRef] = field(default_factory=list)  # the highest-scoring defects

    def as_json(self) -> dict[str, object]:
        return {
            "cluster_id": self.cluster_id,
            "size": self.size,
            "novel": self.novel,
            "first_seen": self.first_seen.isoformat(),
            "last_seen": self.last_seen.isoformat(),
            "locations": self.locations,
            "severities": self.severities,
            "cameras": self.cameras,
            "nearest_known": self.nearest_known,
            "nearest_distance": self.nearest_distance,
            "examples": [{"frame_id": r.frame_id, "defect": r.index} for r in self.examples],
        }


@dataclass
class ClusterRun:
    """What a run found and changed."""

    defects: int
    clusters: list[ClusterSummary]
    noise: int
    changed_records: int
    seconds: float
    reducer: str
    alerts: list[Alert] = field(default_factory=list)

    @property
    def novel(self) -> list[ClusterSummary]:
        return [c for c in self.clusters if c.novel]

    def as_json(self) -> dict[str, object]:
        return {
            "defects": self.defects,
            "noise": self.noise,
            "changed_records": self.changed_records,
            "seconds": round(self.seconds, 3),
            "reducer": self.reducer,
            "clusters": [c.as_json() for c in self.clusters],
        }


# ------------------------------------------------------------------------------------ reading


def read_inspections(
    records: RecordStore, filters: InspectionQuery, max_defects: int, progress: bool = False
) -> Iterator[Inspection]:
    """The NG inspections matching ``filters``, newest first, until they hold ``max_defects``
    defects. Pages are bounded by the time the read began, so records stored meanwhile do not
    shift the pages; a frame is yielded once."""
    base = filters.model_copy(update={"verdict": "NG", "limit": PAGE, "offset": 0})
    if base.captured_to is None:
        base = base.model_copy(update={"captured_to": datetime.now(UTC)})
    seen: set[str] = set()
    defects = 0
    offset = 0
    with tqdm(total=max_defects, desc="reading defects", unit="defect", disable=not progress) as bar:
        while defects < max_defects:
            page = records.query_inspections(base.model_copy(update={"offset": offset}))
            for inspection in page:
                if inspection.frame_id in seen:
                    continue
                seen.add(inspection.frame_id)
                found = sum(1 for d in inspection.defects if d.embedding)
                defects += found
                bar.update(found)
                yield inspection
            if len(page) < PAGE:
                return
            offset += PAGE


def collect_defects(inspections: Sequence[Inspection], max_defects: int) -> DefectSet:
    """The defects that have an embedding (of the most common dimension: a model change may mix
    sizes; the others are left alone), at most ``max_defects``."""
    dims = Counter(len(d.embedding) for i in inspections for d in i.defects if d.embedding)
    refs: list[DefectRef] = []
    vectors: list[list[float]] = []
    ids: list[int | None] = []
    if dims:
        dim = dims.most_common(1)[0][0]
        for inspection in inspections:
            for index, defect in enumerate(inspection.defects):
                if len(defect.embedding) == dim and len(refs) < max_defects:
                    refs.append(DefectRef(inspection.frame_id, index))
                    vectors.append(defect.embedding)
                    ids.append(defect.cluster_id)
    raw = np.asarray(vectors, np.float32).reshape(len(vectors), -1 if vectors else 0)
    norms = np.linalg.norm(raw, axis=1, keepdims=True)
    embeddings = (raw / np.where(norms > 0, norms, 1.0)).astype(np.float32)
    return DefectSet(refs, embeddings, ids, {i.frame_id: i for i in inspections})


# --------------------------------------------------------------------------------- clustering


def reduce(embeddings: np.ndarray, settings: ClusterSettings) -> tuple[np.ndarray, str]:
    """Embeddings reduced for HDBSCAN, and the reducer used (UMAP's first call in a process
    compiles it with numba: tens of seconds)."""
    n = embeddings.shape[0]
    components = min(settings.components, embeddings.shape[1], max(1, n - 1))
    if settings.reducer == "umap" and n >= MIN_FOR_UMAP:
        import umap  # imported here: numba's start-up cost is paid only by runs that use it

        reducer = umap.UMAP(
            n_components=components,
            n_neighbors=min(settings.neighbours, n - 1),
            min_dist=0.0,
            metric="cosine",
            random_state=settings.seed,
            n_jobs=1,  # a fixed seed makes UMAP single-threaded anyway; said so it does not warn
        )
        return np.asarray(reducer.fit_transform(embeddings), np.float32), "umap"
    from sklearn.decomposition import PCA

    return np.asarray(PCA(components, random_state=settings.seed).fit_transform(embeddings)), "pca"


def group(reduced: np.ndarray, settings: ClusterSettings) -> np.ndarray:
    """HDBSCAN labels (-1: noise) for reduced embeddings."""
    from sklearn.cluster import HDBSCAN

    if reduced.shape[0] < settings.min_cluster_size:
        return np.full(reduced.shape[0], -1)
    labels: np.ndarray = HDBSCAN(min_cluster_size=settings.min_cluster_size, copy=True).fit_predict(reduced)
    return labels


def _centroid(vectors: np.ndarray) -> np.ndarray:
    mean = vectors.mean(axis=0)
    norm = float(np.linalg.norm(mean))
    return mean / norm if norm > 0 else mean


@dataclass
class Assignment:
    ids: list[int | None]  # the new id of every defect
    novel: dict[int, tuple[int | None, float | None]]  # novel id → nearest known id, its distance


def assign_ids(
    embeddings: np.ndarray, labels: np.ndarray, previous: Sequence[int | None], match_distance: float
) -> Assignment:
    """Stable cluster ids for HDBSCAN's groups (see the module docstring); noise keeps its old id."""
    known_ids = sorted({i for i in previous if i is not None})
    centroids = {
        cid: _centroid(embeddings[[k for k, p in enumerate(previous) if p == cid]]) for cid in known_ids
    }
    next_id = (max(known_ids) + 1) if known_ids else 0
    ids: list[int | None] = list(previous)
    novel: dict[int, tuple[int | None, float | None]] = {}
    for label in sorted(set(labels.tolist()) - {-1}):
        members = [int(k) for k in np.flatnonzero(labels == label)]
        old = Counter(previous[k] for k in members if previous[k] is not None)
        chosen: int | None = None
        if old and 4 * sum(old.values()) >= len(members):  # at least a quarter had ids
            chosen = old.most_common(1)[0][0]
        nearest: int | None = None
        distance: float | None = None
        if chosen is None and centroids:
            centre = _centroid(embeddings[members])
            distances = {cid: 1.0 - float(centre @ c) for cid, c in centroids.items()}
            nearest = min(distances, key=lambda cid: distances[cid])
            distance = round(distances[nearest], 4)
            if distance <= match_distance:
                chosen = nearest
        if chosen is None:
            chosen = next_id
            next_id += 1
            if known_ids:  # the first run sets the baseline: nothing is novel then
                novel[chosen] = (nearest, distance)
        for k in members:
            ids[k] = chosen
    return Assignment(ids, novel)


def summarise(defects: DefectSet, assignment: Assignment, examples: int = 6) -> list[ClusterSummary]:
    members: dict[int, list[int]] = {}
    for k, cid in enumerate(assignment.ids):
        if cid is not None:
            members.setdefault(cid, []).append(k)
    summaries = []
    for cid, ks in sorted(members.items()):
        pairs = [(defects.inspections[defects.refs[k].frame_id], defects.refs[k]) for k in ks]
        times = [inspection.captured_at for inspection, _ in pairs]
        ranked = sorted(pairs, key=lambda p: -p[0].defects[p[1].index].max_score)
        nearest, distance = assignment.novel.get(cid, (None, None))
        summaries.append(
            ClusterSummary(
                cluster_id=cid,
                size=len(ks),
                novel=cid in assignment.novel,
                first_seen=min(times),
                last_seen=max(times),
                locations=dict(Counter(i.defects[r.index].location for i, r in pairs).most_common()),
                severities=dict(Counter(i.defects[r.index].severity for i, r in pairs).most_common()),
                cameras=dict(Counter(i.camera_id for i, _ in pairs).most_common()),
                nearest_known=nearest,
                nearest_distance=distance,
                examples=[r for _, r in ranked[:examples]],
            )
        )
    return summaries


def changed_records(defects: DefectSet, ids: Sequence[int | None]) -> list[Inspection]:
    """The inspections whose defects' cluster ids change, with the new ids."""
    updates: dict[str, dict[int, int | None]] = {}
    for ref, old, new in zip(defects.refs, defects.cluster_ids, ids, strict=True):
        if old != new:
            updates.setdefault(ref.frame_id, {})[ref.index] = new
    changed = []
    for frame_id, by_index in updates.items():
        inspection = defects.inspections[frame_id]
        new_defects = [
            d.model_copy(update={"cluster_id": by_index[k]}) if k in by_index else d
            for k, d in enumerate(inspection.defects)
        ]
        changed.append(inspection.model_copy(update={"defects": new_defects}))
    return changed


def novel_alert(summary: ClusterSummary, line_id: str) -> Alert:
    where = ", ".join(summary.cameras)
    return Alert(
        alert_id=new_uuid7(),
        line_id=line_id,
        camera_id=next(iter(summary.cameras)) if len(summary.cameras) == 1 else None,
        kind="novel_defect_cluster",
        severity="warning",
        message=(
            f"a new kind of defect: cluster {summary.cluster_id}, {summary.size} defects on {where}"
            f" since {summary.first_seen:%Y-%m-%d %H:%M} UTC"
        ),
        raised_at=datetime.now(UTC),
        details={"cluster": cast(JsonValue, summary.as_json())},
    )


def cluster_defects(
    records: RecordStore,
    settings: ClusterSettings | None = None,
    filters: InspectionQuery | None = None,
    *,
    write: bool = True,
    progress: bool = False,
    on_alert: Callable[[Alert], None] | None = None,
) -> ClusterRun:
    """One clustering run over the store (see the module docstring). With ``write`` False nothing
    is stored (a dry run). Alerts are stored with the record store and handed to ``on_alert``."""
    settings = settings or ClusterSettings()
    start = time.perf_counter()
    inspections = list(
        read_inspections(records, filters or InspectionQuery(), settings.max_defects, progress)
    )
    defects = collect_defects(inspections, settings.max_defects)
    if len(defects) < 2:
        return ClusterRun(len(defects), [], len(defects), 0, time.perf_counter() - start, "none")
    reduced, used = reduce(defects.embeddings, settings)
    labels = group(reduced, settings)
    assignment = assign_ids(defects.embeddings, labels, defects.cluster_ids, settings.match_distance)
    summaries = summarise(defects, assignment)
    changed = changed_records(defects, assignment.ids)
    alerts: list[Alert] = []
    if write:
        for k in tqdm(range(0, len(changed), WRITE_CHUNK), desc="writing cluster ids", disable=not progress):
            records.upsert_inspections(changed[k : k + WRITE_CHUNK])
        for summary in summaries:
            if summary.novel:
                line = Counter(defects.inspections[r.frame_id].line_id for r in summary.examples)
                alert = novel_alert(summary, line.most_common(1)[0][0])
                records.add_alert(alert)
                if on_alert is not None:
                    on_alert(alert)
                alerts.append(alert)
    noise = sum(1 for cid in assignment.ids if cid is None)
    return ClusterRun(len(defects), summaries, noise, len(changed), time.perf_counter() - start, used, alerts)


# ------------------------------------------------------------------------------ periodic runs


class PeriodicClustering:
    """Clustering in the background of a running line: :meth:`poll` (after each stored group in the
    embedded line, from the leader's timer in the distributed one) starts a run on a thread when
    ``every_s`` has passed and ``min_new_defects`` defects were stored since the last; one run at a
    time, never in the caller's way. A failed run is logged and tried again next time."""

    def __init__(
        self,
        records: RecordStore,
        settings: ClusterSettings | None = None,
        on_alert: Callable[[Alert], None] | None = None,
    ) -> None:
        self.records = records
        self.settings = settings or ClusterSettings()
        self.on_alert = on_alert
        self.new_defects = 0
        self.runs: list[ClusterRun] = []
        self._last = time.monotonic()
        self._since: datetime | None = None  # when the last run_if_new run started
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def count(self, inspections: Sequence[Inspection]) -> None:
        """Note stored records (their defects with an embedding count towards the next run)."""
        found = sum(1 for i in inspections if i.verdict == "NG" for d in i.defects if d.embedding)
        with self._lock:
            self.new_defects += found

    def due(self) -> bool:
        with self._lock:
            return (
                self.settings.enabled
                and self.new_defects >= self.settings.min_new_defects
                and time.monotonic() - self._last >= self.settings.every_s
                and (self._thread is None or not self._thread.is_alive())
            )

    def poll(self) -> bool:
        """Start a run when one is due; True when one was started."""
        if not self.due():
            return False
        with self._lock:
            self._last = time.monotonic()
            self.new_defects = 0
            self._thread = threading.Thread(target=self._run, name="linewatch-clustering", daemon=True)
            self._thread.start()
        return True

    def _run(self) -> None:
        try:
            run = cluster_defects(self.records, self.settings, on_alert=self.on_alert)
        except Exception:
            log.exception("a periodic clustering run failed; it is tried again next time")
            return
        self.runs.append(run)
        log.info(
            "clustered %d defects into %d clusters (%d novel) in %.1f s",
            run.defects,
            len(run.clusters),
            len(run.novel),
            run.seconds,
        )

    def run_if_new(self) -> ClusterRun | None:
        """Run now, in the caller's thread, if ``min_new_defects`` NG frames were captured since the
        last run started (the store counts them: the distributed line's leader calls this from its
        timer and sees every worker's records). None when nothing was run."""
        if not self.settings.enabled:
            return None
        started = datetime.now(UTC)
        new = self.records.count_inspections(InspectionQuery(verdict="NG", captured_from=self._since))
        if new < self.settings.min_new_defects:
            return None
        run = cluster_defects(self.records, self.settings, on_alert=self.on_alert)
        self._since = started
        self.runs.append(run)
        return run

    def wait(self, timeout_s: float | None = None) -> None:
        """Wait for a run in progress (at the end of a line's run)."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout_s)
