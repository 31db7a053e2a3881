"""Inspection records of the synthetic line without rendering a pixel: for analytics tests and
benchmarks that need thousands to millions of records with known process→defect links.

Each part gets the defects :func:`~services.ingest.synthetic.defect_probabilities` draws for the
process state in force at its capture time (the same planted links as the rendered line), and a
simulated detector reports them: every planted defect becomes a :class:`Defect` in a location,
severity and size typical of its kind, the verdict is NG when a defect is reported, and
``miss_rate`` / ``false_alarm_rate`` make the detector imperfect.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta

import numpy as np

from schemas.defect import Defect, DefectLocation, DefectSeverity
from schemas.inspection import Inspection
from schemas.process import ProcessSnapshot
from services.ingest.frame_ids import replay_frame_id
from services.ingest.synthetic import DEFAULT_START, ProcessSimulator, defect_probabilities, sample_defects

_CELLS: tuple[DefectLocation, ...] = (
    "top_left",
    "top_center",
    "top_right",
    "middle_left",
    "center",
    "middle_right",
    "bottom_left",
    "bottom_center",
    "bottom_right",
)
# kind → (weights over the 3×3 cells, severity, median area in px at 256×256)
_KIND_TRAITS: dict[str, tuple[tuple[float, ...], DefectSeverity, float]] = {
    "sink_mark": ((0, 1, 0, 1, 6, 1, 0, 1, 0), "major", 900.0),
    "flash": ((3, 3, 3, 1, 0, 1, 3, 3, 3), "minor", 250.0),
    "scratch": ((1, 1, 1, 1, 1, 1, 1, 1, 1), "minor", 400.0),
    "contamination": ((1, 1, 1, 1, 2, 1, 1, 1, 1), "major", 120.0),
    "crack": ((4, 1, 4, 1, 0, 1, 4, 1, 4), "critical", 600.0),
}


def synthetic_inspections(
    n: int,
    seed: int = 0,
    *,
    line_id: str = "line-1",
    camera_ids: Sequence[str] = ("cam-1",),
    recipe: str = "housing-A",
    start: datetime = DEFAULT_START,
    frame_period_s: float = 0.5,
    drift: str | None = None,
    drift_duration_s: float = 600.0,
    drift_start_s: float = 0.0,
    miss_rate: float = 0.0,
    false_alarm_rate: float = 0.0,
    size: int = 256,
) -> Iterator[Inspection]:
    """``n`` inspection records, one part every ``frame_period_s``; deterministic by ``seed``."""
    if not 0 <= miss_rate < 1 or not 0 <= false_alarm_rate < 1:
        raise ValueError("miss_rate and false_alarm_rate must be in [0, 1)")
    process_seed, part_seed = np.random.SeedSequence([seed, 17]).spawn(2)
    simulator = ProcessSimulator(
        int(process_seed.generate_state(1)[0]),
        start,
        1.0,
        drift,
        drift_duration_s,
        drift_start_s=drift_start_s,
    )
    rng = np.random.default_rng(part_seed)
    cell_px = size / 3
    for index in range(n):
        captured_at = start + timedelta(seconds=index * frame_period_s)
        sample_index = simulator.index_at(captured_at)
        state = simulator.state_at(captured_at)
        kinds = sample_defects(rng, defect_probabilities(state))
        reported = [kind for kind in kinds if rng.random() >= miss_rate]
        if not reported and rng.random() < false_alarm_rate:
            reported = ["scratch"]
        defects = [_defect(rng, kind, cell_px, size) for kind in reported]
        ng = bool(defects)
        score = 0.5 + 0.5 * rng.beta(2.0, 2.0) if ng else 0.5 * rng.beta(2.0, 5.0)
        camera = camera_ids[index % len(camera_ids)]
        yield Inspection(
            frame_id=replay_frame_id(captured_at, f"synthetic-records/{line_id}/{seed}/{index}"),
            line_id=line_id,
            station_id="station-1",
            camera_id=camera,
            part_id=f"{line_id}-{index:07d}",
            recipe=recipe,
            captured_at=captured_at,
            model_name="synthetic-detector",
            model_version="1",
            score_raw=float(score) * 10.0,
            score=float(score),
            verdict="NG" if ng else "OK",
            defects=defects,
            process=ProcessSnapshot(
                status="ok",
                params=state.as_params(),
                sample_ts=simulator.time_at(sample_index),
                age_s=(captured_at - simulator.time_at(sample_index)).total_seconds(),
                machine_id="imm-1",
            ),
            inspected_at=captured_at + timedelta(milliseconds=40),
        )


def _defect(rng: np.random.Generator, kind: str, cell_px: float, size: int) -> Defect:
    weights, severity, median_area = _KIND_TRAITS[kind]
    p = np.asarray(weights, dtype=float)
    cell = int(rng.choice(len(_CELLS), p=p / p.sum()))
    cx = (cell % 3 + rng.uniform(0.2, 0.8)) * cell_px
    cy = (cell // 3 + rng.uniform(0.2, 0.8)) * cell_px
    area = max(4, round(median_area * float(rng.lognormal(0.0, 0.4))))
    side = max(2, round(area**0.5))
    x, y = max(0, min(size - side, round(cx - side / 2))), max(0, min(size - side, round(cy - side / 2)))
    max_score = float(rng.uniform(0.6, 1.0))
    return Defect.model_validate(
        {
            "bbox": {"x": x, "y": y, "width": side, "height": side},
            "area_px": area,
            "area_share": min(1.0, area / size**2),
            "max_score": max_score,
            "mean_score": max_score * float(rng.uniform(0.6, 0.95)),
            "centroid": {"x": float(cx), "y": float(cy)},
            "location": _CELLS[cell],
            "severity": severity,
        }
    )
