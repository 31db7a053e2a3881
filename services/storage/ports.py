"""The storage ports: what the rest of linewatch needs from a blob store and a record store."""

from collections.abc import Sequence
from typing import NamedTuple, Protocol

from schemas.alert import Alert
from schemas.blob import BlobRef
from schemas.dead_letter import DeadLetter
from schemas.inspection import Inspection
from services.storage.analytics_query import AnalyticsQuery, ResultRow
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
