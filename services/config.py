"""linewatch's settings: a YAML file (see ``linewatch.example.yaml``), overridden by the environment.

Environment variables start with ``LINEWATCH_``; nested settings use ``__``, e.g.
``LINEWATCH_KEEP_FRAMES=false``, ``LINEWATCH_BATCHING__MAX_BATCH=4``,
``LINEWATCH_STORES__RECORDS=sqlite:////var/lib/linewatch/records.db``; lists are JSON
(``LINEWATCH_CAMERAS='["cam-1","cam-2"]'``). The API's settings are the API's own
(``LINEWATCH_API_PORT``, ``LINEWATCH_API_KEYS``, ...; see ``services/api/settings.py``), taken
from the ``api:`` section of the file where the environment does not set them.
Relative paths are relative to the working directory.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from services.analytics.alerting import AlertSettings
from services.analytics.clustering import ClusterSettings
from services.api.settings import ApiSettings
from services.ingest.ports import FrameContext
from services.steps.admit import MIB
from services.stream.options import LineOptions


def _api_settings(value: Any) -> Any:
    """The ``api`` section as :class:`ApiSettings`, whose own ``LINEWATCH_API_*`` variables win."""
    if not isinstance(value, dict):
        return value
    overridden = {name for name in ApiSettings.model_fields if f"LINEWATCH_API_{name.upper()}" in os.environ}
    return ApiSettings(**{key: v for key, v in value.items() if key not in overridden})


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StoreSettings(Section):
    records: str = "sqlite:///runs/records.db"
    blobs: str = "file:runs/blobs"
    labels: str = "sqlite:///runs/labels.db"


class ReviewSettings(Section):
    """The review queue (``linewatch review sync``; see services/review/queue.py)."""

    budget_per_day: int = Field(default=200, ge=0, description="Frames queued per line and UTC day at most")
    near_band: float = Field(default=0.1, ge=0, le=0.5, description="Queue scores this close to 0.5")
    rare_below: int = Field(default=3, ge=0, description="A defect class seen fewer times is rare")
    latency_factor: float = Field(default=3.0, gt=1, description="Slower than this × the median is unusual")


class BatchSettings(Section):
    max_batch: int = Field(default=4, ge=1, description="Frames per detector batch at most")
    max_wait_ms: float = Field(default=50.0, ge=0, description="How long a batch waits to fill")
    queue_size: int = Field(default=4, ge=1, description="Frames waiting before each step at most")


class ProcessSettings(Section):
    max_age_s: float = Field(default=5.0, ge=0, description="Older samples are joined as 'stale'")
    clock_skew_s: float = Field(default=2.0, ge=0, description="Timestamps further ahead are dead letters")


class TopicSettings(Section):
    frames: str = "linewatch.frames"
    process: str = "linewatch.process"
    inspections: str = "linewatch.inspections"
    alerts: str = "linewatch.alerts"
    dead_letters: str = "linewatch.dead-letters"


class KafkaSettings(Section):
    """The distributed runtime's broker, topics and Faust worker (``linewatch ingest``, ``worker``)."""

    bootstrap_servers: str = Field(default="127.0.0.1:9092", description="host:port[,host:port...]")
    app_id: str = Field(default="linewatch", description="Faust app id: the consumer group of the workers")
    topics: TopicSettings = Field(default_factory=TopicSettings)
    partitions: int = Field(default=4, ge=1, description="Partitions of each topic created at start")
    replication_factor: int = Field(default=1, ge=1)
    security_protocol: str = Field(
        default="PLAINTEXT", description="PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL"
    )
    sasl_mechanism: str | None = Field(default=None, description="PLAIN, SCRAM-SHA-256, SCRAM-SHA-512")
    sasl_username: str | None = None
    sasl_password: str | None = None
    ssl_cafile: Path | None = None
    producer_batch_records: int = Field(
        default=1,
        ge=1,
        description="Records per producer batch: 1 for brokers whose offsets go wrong with batches "
        "(Tansu); raise it on Apache Kafka",
    )
    compression: str = Field(
        default="gzip", description="none or gzip (lz4, snappy, zstd need their libraries in the workers)"
    )
    idempotent_producer: bool = Field(
        default=False, description="Needs a broker with idempotent producers (Apache Kafka; not Tansu)"
    )
    buffer_records: int = Field(
        default=10_000, ge=1, description="Records a producer keeps while the broker is away, then waits"
    )
    session_timeout_s: float = Field(
        default=6.0, gt=0, description="A dead worker's partitions move after it"
    )
    sink_records: str | None = Field(
        default=None,
        description="A second record store that a sink agent fills from the inspections topic "
        "(the workers store into stores.records themselves)",
    )
    concurrency: int = Field(
        default=16,
        ge=1,
        description="Frames each worker inspects at once (Faust agent concurrency); their detections "
        "share batches of up to batching.max_batch",
    )
    late_process_s: float = Field(
        default=1.0, ge=0, description="How long a frame waits for a process sample taken after it"
    )


class LinewatchSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LINEWATCH_", env_nested_delimiter="__", extra="forbid")

    line_id: str = "line-1"
    station_id: str = "station-1"
    recipe: str | None = Field(default=None, description="Recipe of frames whose source names none")
    frame_sources: list[str] = Field(default_factory=list, description="Frame source URLs")
    process_sources: list[str] = Field(default_factory=list, description="Process source URLs")
    models: dict[str, Path] = Field(default_factory=dict, description="Recipe → model directory")
    stores: StoreSettings = Field(default_factory=StoreSettings)
    alerts: AlertSettings = Field(default_factory=AlertSettings)
    clustering: ClusterSettings = Field(default_factory=ClusterSettings)
    review: ReviewSettings = Field(default_factory=ReviewSettings)
    batching: BatchSettings = Field(default_factory=BatchSettings)
    process: ProcessSettings = Field(default_factory=ProcessSettings)
    keep_frames: bool = Field(default=True, description="False: delete raw frames once inspected")
    cameras: list[str] = Field(default_factory=list, description="Known cameras; empty: any camera")
    lines: list[str] = Field(default_factory=list, description="Known lines; empty: any line")
    max_frame_mib: float = Field(default=64.0, gt=0, description="Larger frames are dead letters")
    inference: str | None = Field(
        default=None,
        description="Where frames are scored: local:// (threads), process:// (worker processes), "
        "triton://HOST:8001 (a Triton Inference Server holding the recipes' ensembles); "
        "default process:// (local:// when detector_processes is false)",
    )
    detector_processes: bool = Field(
        default=True,
        description="Run each detector in a worker process of its own (false: threads of this process); "
        "inference, when set, decides instead",
    )
    api: Annotated[ApiSettings, BeforeValidator(_api_settings)] = Field(default_factory=ApiSettings)
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    registry: str | None = Field(
        default=None,
        description="Model registry URL (file:///var/linewatch/registry): each recipe with a production "
        "model there is scored by it, and the embedded line swaps models when one is promoted or rolled back",
    )
    registry_poll_s: float = Field(default=5.0, gt=0, description="How often the line looks at the registry")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # the environment overrides what is given at init, which is what the YAML file says
        return env_settings, init_settings

    def frame_context(self) -> FrameContext:
        """The names a frame carries when its source URL does not give them."""
        recipe = self.recipe or (next(iter(self.models)) if len(self.models) == 1 else "default")
        return FrameContext(line_id=self.line_id, station_id=self.station_id, recipe=recipe)

    def line_options(self) -> LineOptions:
        return LineOptions(
            max_batch=self.batching.max_batch,
            max_wait_ms=self.batching.max_wait_ms,
            queue_size=self.batching.queue_size,
            max_process_age_s=self.process.max_age_s,
            clock_skew_s=self.process.clock_skew_s,
            keep_frames=self.keep_frames,
            cameras=frozenset(self.cameras) if self.cameras else None,
            lines=frozenset(self.lines) if self.lines else None,
            max_frame_bytes=int(self.max_frame_mib * MIB),
        )

    def inference_url(self) -> str:
        """The inference port's URL: ``inference`` when set, else from ``detector_processes``."""
        return self.inference or ("process://" if self.detector_processes else "local://")


def load_settings(path: Path | None = None) -> LinewatchSettings:
    """Settings from the YAML file at ``path`` (if given) with ``LINEWATCH_*`` overrides."""
    data: Any = {}
    if path is not None:
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist")
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if not isinstance(data, dict):
            raise ValueError(f"config file {path} must hold a mapping of settings, not {type(data).__name__}")
    return LinewatchSettings(**data)


def settings_or_defaults(path: Path | None = None) -> LinewatchSettings:
    """The settings in ``path`` (default ``linewatch.yaml`` in the working directory) when that file
    exists, else the defaults (with ``LINEWATCH_*`` overrides): what the store-reading commands use."""
    config = path if path is not None else Path("linewatch.yaml")
    return load_settings(config) if config.is_file() else LinewatchSettings()


def parse_time(text: str | None, flag: str) -> datetime | None:
    """An ISO 8601 time given on the command line (a time without a zone is UTC); ValueError naming
    ``flag`` when it is not one."""
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{flag} {text!r} is not an ISO 8601 time") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
