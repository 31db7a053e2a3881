"""Process samples from the simulated moulding machine (:class:`ProcessSimulator`), one per period.

``SyntheticLine(seed).process`` is the simulator behind the synthetic line's parts, so a
``SimulatorSource`` made from a line with the same seed and start gives the process in force when
each of its parts was made.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

from schemas.dead_letter import DeadLetter
from schemas.process import ProcessSample
from services.ingest.synthetic import ProcessSimulator, ProcessState


class SimulatorSource:
    def __init__(
        self, simulator: ProcessSimulator, line_id: str, machine_id: str, samples: int | None = None
    ) -> None:
        self.simulator, self.line_id, self.machine_id, self.limit = simulator, line_id, machine_id, samples
        self.name = f"simulator:{machine_id}"

    def samples(self) -> Iterator[ProcessSample | DeadLetter]:
        indices = range(self.limit) if self.limit is not None else itertools.count()
        for index in indices:
            ts = self.simulator.time_at(index)
            yield ProcessSample(
                line_id=self.line_id,
                machine_id=self.machine_id,
                ts=ts,
                params=self.simulator.state_at(ts).as_params(),
                units=dict(ProcessState.UNITS),
            )

    def close(self) -> None:
        pass
