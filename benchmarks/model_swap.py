"""A model swap while the embedded line runs: frames lost or scored twice, and the switch-over time.

The synthetic moulding line's ``--frames`` parts go through the embedded runtime (the real line:
claim check, process join, detection, defects, heat maps, SQLite records) with its models taken from
a model registry and followed by the line (``registry:`` in linewatch.yaml). When the source has
given half of the frames, a second model version is promoted (same detector, retrained with another
seed, so its records are told apart by ``model_version``); the line loads it, starts it beside the
running one and swaps. Then every frame the source gave is looked up in the record store.

    lost        frames the source gave that have no record and no dead letter
    duplicated  records beyond one per frame id (the store is keyed by frame id, so a frame scored
                twice would show as a record by the other model's version after a record by the first:
                counted by the inference port's own tally instead: frames scored minus frames given)
    switch-over from the new model being ready to the old one finishing its last batch; load: from
                the promotion being seen to the new model being ready

    .venv/bin/python benchmarks/model_swap.py [--frames 5000] [--threads 2]

Prints a table and writes benchmarks/results/model_swap.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from services.inference.local import LocalInference  # noqa: E402
from services.inference.swap import SwappablePort  # noqa: E402
from services.ingest.ports import CapturedFrame  # noqa: E402
from services.ingest.synthetic import write_dataset  # noqa: E402
from services.ingest.synthetic_source import SyntheticSource  # noqa: E402
from services.registry.files import FileModelRegistry  # noqa: E402
from services.registry.follow import RegistryFollower, production_inspectors  # noqa: E402
from services.steps.detect import Detected  # noqa: E402
from services.storage.query import InspectionQuery  # noqa: E402
from services.storage.sqlite_record_store import SqliteRecordStore  # noqa: E402
from services.storage.tiered_blob_store import TieredBlobStore  # noqa: E402
from services.stream.runtime import Line, LineOptions  # noqa: E402
from services.vision.train import TrainConfig, train  # noqa: E402

WEIGHTS = ROOT.parent / "shared" / "weights" / "mobilenet_v2_imagenet_dequant.pth"
RESULT = ROOT / "benchmarks" / "results" / "model_swap.json"


class CountingPort(LocalInference):
    """The local port, counting the frames it scored by model version."""

    scored: ClassVar[Counter[str]] = Counter()

    async def detect(
        self, recipe: str, images: Sequence[np.ndarray], sizes: Sequence[tuple[int, int]]
    ) -> Detected:
        detected = await super().detect(recipe, images, sizes)
        CountingPort.scored[detected.model_version] += len(images)
        return detected


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--frames", type=int, default=5000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--train-parts", type=int, default=40)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        registry = FileModelRegistry(work / "registry")
        recipe = None
        for seed in (0, 1):
            data, model = work / f"data-{seed}", work / f"model-{seed}"
            write_dataset(data, n_train=args.train_parts, n_test=0, seed=seed)
            print(f"training model {seed + 1} of 2", flush=True)
            train(
                TrainConfig(
                    data_root=data,
                    category="synthetic",
                    out_dir=model,
                    weights=WEIGHTS,
                    activation="relu",
                    seed=seed,
                    progress=False,
                )
            )
            source = SyntheticSource(seed=0, parts=1)
            recipe = source.line.recipe
            entry = registry.register(model, recipe, "benchmark")
            if seed == 0:
                registry.promote(recipe, entry.version, "benchmark")
            else:
                candidate = entry.version
        assert recipe is not None
        served: str = recipe
        inspectors = production_inspectors(registry)
        first = inspectors[recipe].card.version
        given: list[str] = []

        class PromotingSource(SyntheticSource):
            def frames(self) -> Iterator[Any]:
                for i, item in enumerate(super().frames()):
                    if i == args.frames // 2:
                        registry.promote(served, candidate, "benchmark")
                    if isinstance(item, CapturedFrame):
                        given.append(item.frame_id)
                    yield item

        records = SqliteRecordStore(work / "records.db")
        blobs = TieredBlobStore.at(work / "blobs", group_commit=True)
        port = SwappablePort(CountingPort(inspectors))
        follower = RegistryFollower(registry, port, inspectors, lambda m: CountingPort(m), interval_s=1.0)
        line = Line(
            [PromotingSource(seed=0, parts=args.frames)],
            [],
            port,
            records,
            blobs,
            LineOptions(),
            companions=[follower.run],
        )
        started = time.perf_counter()
        asyncio.run(line.run())
        wall = time.perf_counter() - started
        stored = records.query_inspections(InspectionQuery(limit=10_000))
        while len(stored) < records.count_inspections():  # (more than one page)
            stored += records.query_inspections(InspectionQuery(limit=10_000, offset=len(stored)))
        letters = records.list_dead_letters(limit=100_000)
        ids = Counter(s.frame_id for s in stored)
        lettered = {d.frame_id for d in letters if d.frame_id}
        lost = [f for f in given if f not in ids and f not in lettered]
        versions = Counter(s.model_version for s in stored)
        scored_total = sum(CountingPort.scored.values())
        swap = port.swaps[0] if port.swaps else None
        result = {
            "frames_given": len(given),
            "records": len(stored),
            "distinct_records": len(ids),
            "dead_letters": len(letters),
            "lost": len(lost),
            "scored_twice": max(0, scored_total - len(given)),
            "by_version": {first: versions.get(first, 0), candidate: versions.get(candidate, 0)},
            "swaps": len(port.swaps),
            "load_s": round(follower.load_s[0] + swap.load_s, 3) if swap else None,
            "switch_over_s": round(swap.switch_s, 4) if swap else None,
            "frames_per_s": round(len(given) / wall, 1),
            "wall_s": round(wall, 1),
            "threads": args.threads,
            "machine": platform.node(),
        }
        records.close()
        blobs.close()
    print(
        "| frames | records | lost | scored twice | dead letters | by version (old / new) | load s |", end=""
    )
    print(" switch-over s | frames/s |\n" + "|---" * 9 + "|")
    print(
        f"| {result['frames_given']} | {result['records']} | {result['lost']} | {result['scored_twice']} |"
        f" {result['dead_letters']} | {versions.get(first, 0)} / {versions.get(candidate, 0)} |"
        f" {result['load_s']} | {result['switch_over_s']} | {result['frames_per_s']} |"
    )
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result["lost"] == 0 and result["scored_twice"] == 0 and result["swaps"] == 1 else 1


if __name__ == "__main__":
    raise SystemExit(main())
