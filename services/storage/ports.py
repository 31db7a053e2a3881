"""The storage ports: what the rest of linewatch needs from a blob store and a record store."""

from collections.abc import Sequence
from typing import NamedTuple, Protocol

from schemas.alert import Alert
from schemas.blob import BlobRef
from schemas.dead_letter import DeadLetter
from schemas.inspection import Inspection
from schemas.label import Label, LabelEvent, Review
from services.storage.analytics_query import AnalyticsQuery, ResultRow
from services.storage.label_query import LabelQuery
from services.storage.query import InspectionQuery, NgRateBucket


class BlobStore(Protocol):
    """Image and heat-map bytes, content-addressed; ``put`` of the same bytes twice is one blob.

    A blob is durable once ``sync`` has returned after its ``put`` (a store may make each ``put``
    durable by itself; ``sync`` then has nothing to do): call it before storing a record that
    points at blobs."""

    def put(self, data: bytes, encoding: str, width: int, height: int) -> BlobRef: ...

    def sync(self) -> None: ...

    def get(self, uri: str) -> bytes: ...

    def delete(self, uri: str) -> None: ...

    def exists(self, uri: str) -> bool: ...

    def close(self) -> None: ...


class RecordStore(Protocol):
    """Inspections, dead letters and alerts. Writes are idempotent where the record has a key."""

    def upsert_inspection(self, inspection: Inspection) -> None: ...

    def upsert_inspections(self, inspections: Sequence[Inspection]) -> None:
        """Several at once, all or none."""
        ...

    def get_inspection(self, frame_id: str) -> Inspection | None: ...

    def query_inspections(self, filters: InspectionQuery | None = None) -> list[Inspection]: ...

    def count_inspections(self, filters: InspectionQuery | None = None) -> int: ...

    def ng_rate(self, bucket_s: int, filters: InspectionQuery | None = None) -> list[NgRateBucket]: ...

    def add_dead_letter(self, dead_letter: DeadLetter) -> bool: ...

    def list_dead_letters(self, limit: int = 100) -> list[DeadLetter]: ...

    def count_dead_letters(self) -> int: ...

    def add_alert(self, alert: Alert) -> None: ...

    def list_alerts(self, limit: int = 100) -> list[Alert]: ...

    def close(self) -> None: ...


class ParamStats(NamedTuple):
    """How often a process parameter was recorded among the matching frames, and its range."""

    frames: int
    minimum: float
    maximum: float
    mean: float


class AnalyticsStore(Protocol):
    """A record store that answers analytics queries where its records live (SQL, aggregations)."""

    def aggregate(self, query: AnalyticsQuery) -> list[ResultRow]:
        """The query's groups and measures, sorted by key; only groups with a frame."""
        ...

    def parameter_stats(self, filters: InspectionQuery | None = None) -> dict[str, ParamStats]:
        """Every process parameter recorded on a matching frame, with its count and range."""
        ...


class LabelStore(Protocol):
    """Labels of inspected frames (keyed by ``frame_id``), and the history of every change to them."""

    def add_labels(self, labels: Sequence[Label], actor: str = "linewatch") -> int:
        """Store the labels whose frame has none yet, each with its first history entry; a label
        already stored is left as it is (a replay adds nothing, and never undoes a review). All or
        none; returns how many were new."""
        ...

    def get_label(self, frame_id: str) -> Label | None: ...

    def query_labels(self, filters: LabelQuery | None = None) -> list[Label]: ...

    def count_labels(self, filters: LabelQuery | None = None) -> int: ...

    def review(self, frame_id: str, review: Review, expected_revision: int | None = None) -> Label:
        """Record a person's review (status "reviewed", revision + 1, a history entry naming the
        reviewer and the fields changed) and return the new label. ``LabelNotFound`` when the frame
        has no label; ``LabelConflict`` when ``expected_revision`` is given and the label has moved
        on (someone else reviewed it first)."""
        ...

    def history(self, frame_id: str) -> list[LabelEvent]:
        """Every change to the frame's label, oldest first."""
        ...

    def close(self) -> None: ...
