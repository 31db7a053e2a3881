"""The file model registry (on the real file system), the swappable port, and a running line that
follows a promotion without losing or repeating a frame."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from services.cli import main
from services.inference.local import LocalInference
from services.inference.swap import SwappablePort
from services.registry.files import FileModelRegistry, open_registry, production_timeline
from services.registry.follow import RegistryFollower, production_inspectors
from services.registry.ports import RegistryError
from services.steps.detect import Detected
from services.storage.file_blob_store import FileBlobStore
from services.storage.sqlite_record_store import SqliteRecordStore
from services.stream.runtime import Line, LineOptions
from services.vision.artifact import read_card, write_card
from tests.stream.fakes import ListSource, captured


@pytest.fixture(scope="module")
def versions(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two model directories with the same weights and different versions (v1, v2)."""
    root = tmp_path_factory.mktemp("versions")
    out = []
    for name in ("v1", "v2"):
        target = root / name
        shutil.copytree(model_dir, target)
        write_card(read_card(target).model_copy(update={"version": f"2025.03-{name}"}), target)
        out.append(target)
    return out[0], out[1]


def test_register_promote_rollback_and_refusals(versions: tuple[Path, Path], tmp_path: Path) -> None:
    registry = open_registry((tmp_path / "registry").as_uri())
    v1, v2 = versions
    first = registry.register(v1, "housing-A", "a.first", note="baseline")
    assert (first.version, first.registered_by, first.note) == ("2025.03-v1", "a.first", "baseline")
    assert "miss_rate" in first.estimates or first.estimates == {}
    assert registry.register(v1, "housing-A", "again") == first  # the same artifact again: nothing new
    registry.register(v2, "housing-A", "b.second")
    assert [e.version for e in registry.versions("housing-A")] == ["2025.03-v1", "2025.03-v2"]
    assert registry.recipes() == ["housing-A"]
    assert registry.stages("housing-A").production is None
    registry.promote("housing-A", "2025.03-v1", "ops")
    stages = registry.promote("housing-A", "2025.03-v2", "ops")
    assert (stages.production, production_timeline(stages)) == ("2025.03-v2", ["2025.03-v1", "2025.03-v2"])
    stages = registry.rollback("housing-A", "ops")
    assert stages.production == "2025.03-v1" and stages.history[-1].previous == "2025.03-v2"
    with pytest.raises(RegistryError, match="no earlier production model"):
        registry.rollback("housing-A", "ops")
    with pytest.raises(RegistryError, match="no model version 'nope'"):
        registry.promote("housing-A", "nope", "ops")
    with pytest.raises(RegistryError, match="cannot name a registry folder"):
        registry.promote("../etc", "2025.03-v1", "ops")
    assert registry.set_shadow("housing-A", "2025.03-v2", "ops").shadow == "2025.03-v2"
    assert registry.set_shadow("housing-A", None, "ops").shadow is None
    assert [c.action for c in registry.stages("housing-A").history] == [
        "promoted",
        "promoted",
        "rolled back",
        "shadow",
        "shadow off",
    ]
    changed = tmp_path / "changed"
    shutil.copytree(v2, changed)
    (changed / "weights.safetensors").write_bytes(b"other weights")
    with pytest.raises(RegistryError, match="already has a different model"):
        registry.register(changed, "housing-A", "c")
    assert read_card(registry.model_dir("housing-A", "2025.03-v1")).version == "2025.03-v1"


def test_the_models_command(
    versions: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = (tmp_path / "registry").as_uri()
    v1, v2 = versions
    assert (
        main(["models", "register", "--registry", url, "--model", str(v1), "--recipe", "r", "--promote"]) == 0
    )
    assert (
        main(["models", "register", "--registry", url, "--model", str(v2), "--recipe", "r", "--by", "k"]) == 0
    )
    assert main(["models", "promote", "--registry", url, "--recipe", "r", "--version", "2025.03-v2"]) == 0
    assert main(["models", "rollback", "--registry", url, "--recipe", "r"]) == 0
    out = capsys.readouterr().out
    assert "r: production 2025.03-v1" in out.splitlines()[-1]
    assert main(["models", "list", "--registry", url]) == 0
    listing = capsys.readouterr().out
    assert "2025.03-v1" in listing and "(production)" in listing and "by k" in listing
    assert main(["models", "rollback", "--registry", url, "--recipe", "r"]) == 2
    assert "no earlier production model" in capsys.readouterr().err
    assert (
        main(
            ["models", "promote", "--recipe", "r", "--version", "x", "--config", str(tmp_path / "none.yaml")]
        )
        == 2
    )
    assert "no registry" in capsys.readouterr().err


class GatedPort:
    """An inference port whose batches wait for ``gate``; counts what it scored."""

    def __init__(self, name: str, gate: asyncio.Event | None = None) -> None:
        self.name, self.gate, self.scored, self.closed = name, gate, 0, False
        self.url, self.slots = f"gated://{name}", 2

    @property
    def recipes(self) -> frozenset[str]:
        return frozenset({"r"})

    @property
    def models(self) -> dict[str, str]:
        return {"r": self.name}

    async def start(self) -> None:
        pass

    async def detect(
        self, recipe: str, images: Sequence[np.ndarray], sizes: Sequence[tuple[int, int]]
    ) -> Detected:
        if self.gate is not None:
            await self.gate.wait()
        self.scored += len(images)
        return Detected([], [], {}, self.name, self.name)

    async def close(self) -> None:
        self.closed = True


def test_a_swap_waits_for_the_old_port_s_batches_and_sends_new_ones_to_the_new_port() -> None:
    async def scenario() -> None:
        gate = asyncio.Event()
        old, new = GatedPort("old", gate), GatedPort("new")
        port = SwappablePort(old)
        await port.start()
        image = [np.zeros((4, 4, 3), np.uint8)]
        in_old = asyncio.create_task(port.detect("r", image, [(4, 4)]))
        await asyncio.sleep(0)
        swapping = asyncio.create_task(port.swap(new))
        await asyncio.sleep(0.01)
        assert port.port is new and not swapping.done()  # switched; the old batch still running
        assert (await port.detect("r", image, [(4, 4)])).model_version == "new"
        gate.set()
        assert (await in_old).model_version == "old"
        switch_s = await swapping
        assert old.closed and not new.closed and old.scored == 1 and new.scored == 1 and switch_s >= 0.01
        with pytest.raises(ValueError, match="keep every recipe served"):
            other = GatedPort("other")
            other.__class__ = type(
                "OtherRecipes", (GatedPort,), {"recipes": property(lambda self: frozenset({"x"}))}
            )
            await port.swap(other)
        assert port.port is new

    asyncio.run(scenario())


@pytest.mark.integration  # a real model in a running line
def test_the_line_follows_a_promotion_and_loses_no_frame(versions: tuple[Path, Path], tmp_path: Path) -> None:
    """300 frames; the registry's production model changes when the source has given 100 of them:
    every frame is stored exactly once, the first by v1, the last by v2."""
    registry = FileModelRegistry(tmp_path / "registry")
    for version in versions:
        registry.register(version, "housing-A", "ops")
    registry.promote("housing-A", "2025.03-v1", "ops")
    inspectors = production_inspectors(registry)
    frames = [captured(i) for i in range(300)]

    class PromotingSource(ListSource):
        def frames(self):  # type: ignore[no-untyped-def]
            for i, item in enumerate(super().frames()):
                if i == 100:
                    registry.promote("housing-A", "2025.03-v2", "ops")
                yield item

    records, blobs = SqliteRecordStore(tmp_path / "records.db"), FileBlobStore(tmp_path / "blobs")
    port = SwappablePort(LocalInference(inspectors))
    follower = RegistryFollower(
        registry, port, inspectors, lambda models: LocalInference(models), interval_s=0.05
    )
    line = Line(
        [PromotingSource(frames)],
        [],
        port,
        records,
        blobs,
        LineOptions(max_batch=4),
        companions=[follower.run],
    )
    summary = asyncio.run(line.run())
    stored = records.query_inspections(limit_all(records))
    assert summary.inspected == 300 and len(stored) == 300 and summary.frame_dead_letters == 0
    assert {s.frame_id for s in stored} == {f.frame_id for f in frames}
    by_time = sorted(stored, key=lambda s: s.captured_at)
    versions_seen = [s.model_version for s in by_time]
    assert versions_seen[0] == "2025.03-v1" and versions_seen[-1] == "2025.03-v2"
    first_v2 = versions_seen.index("2025.03-v2")
    assert 100 <= first_v2 < 300 and all(v == "2025.03-v2" for v in versions_seen[first_v2 + 8 :])
    assert follower.swaps == 1 and len(port.swaps) == 1 and port.swaps[0].switch_s < 5
    records.close()


def limit_all(records: SqliteRecordStore):  # type: ignore[no-untyped-def]
    from services.storage.query import InspectionQuery

    return InspectionQuery(limit=10_000)


@pytest.mark.integration  # a real model in a running line
def test_a_canary_takes_its_share_of_the_frames(versions: tuple[Path, Path], tmp_path: Path) -> None:
    """A canary at 25%: a quarter of the line's frames are scored by the candidate, the rest by
    production; taking the canary off sends everything back to production."""
    registry = FileModelRegistry(tmp_path / "registry")
    for version in versions:
        registry.register(version, "housing-A", "ops")
    registry.promote("housing-A", "2025.03-v1", "ops")
    with pytest.raises(RegistryError, match="between 0 and 1"):
        registry.set_canary("housing-A", "2025.03-v2", 1.5, "ops")
    registry.set_canary("housing-A", "2025.03-v2", 0.25, "ops")
    inspectors = production_inspectors(registry)
    records, blobs = SqliteRecordStore(tmp_path / "records.db"), FileBlobStore(tmp_path / "blobs")
    port = SwappablePort(LocalInference(inspectors))
    follower = RegistryFollower(
        registry, port, inspectors, lambda models: LocalInference(models), interval_s=60
    )

    async def scenario() -> None:
        assert await follower.check()  # the canary is set up before any frame
        line = Line(
            [ListSource([captured(i) for i in range(80)])], [], port, records, blobs, LineOptions(max_batch=1)
        )
        await line.run()

    asyncio.run(scenario())
    stored = records.query_inspections(limit_all(records))
    by_version = {v: sum(1 for s in stored if s.model_version == v) for v in ("2025.03-v1", "2025.03-v2")}
    assert len(stored) == 80 and by_version == {"2025.03-v1": 60, "2025.03-v2": 20}
    assert port.models["housing-A"].endswith("+ canary synthetic-patchcore 2025.03-v2 at 25%")
    registry.set_canary("housing-A", None, None, "ops")
    assert [c.action for c in registry.stages("housing-A").history][-2:] == ["canary", "canary off"]
    records.close()


@pytest.mark.integration  # a real model in a running line
def test_a_worker_s_inference_thread_follows_the_registry(
    versions: tuple[Path, Path], tmp_path: Path
) -> None:
    """The distributed worker's port runs in an inference thread; the follower runs beside it there."""
    import time

    from services.commands.compose import follow_registry
    from services.config import LinewatchSettings
    from services.inference.thread import InferenceThread

    registry = FileModelRegistry(tmp_path / "registry")
    for version in versions:
        registry.register(version, "housing-A", "ops")
    registry.promote("housing-A", "2025.03-v1", "ops")
    settings = LinewatchSettings(registry=(tmp_path / "registry").as_uri(), registry_poll_s=0.05)
    inspectors = production_inspectors(registry)
    port, companions = follow_registry(settings, LocalInference(inspectors), inspectors, "local://")
    thread = InferenceThread(port, companions)
    thread.start_in_thread()
    image = [np.full((64, 64, 3), 128, np.uint8)]
    try:
        assert asyncio.run(thread.detect("housing-A", image, [(64, 64)])).model_version == "2025.03-v1"
        registry.promote("housing-A", "2025.03-v2", "ops")
        deadline = time.monotonic() + 30
        while "2025.03-v2" not in thread.models["housing-A"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert asyncio.run(thread.detect("housing-A", image, [(64, 64)])).model_version == "2025.03-v2"
    finally:
        thread.close_thread()
    assert follow_registry(LinewatchSettings(), port, inspectors, "local://") == (port, [])
