"""Process samples replayed from a CSV file: columns ``ts``, ``machine_id``, then one per parameter.

``ts`` is an ISO 8601 timestamp with a timezone (``Z`` or ``+01:00``); parameter cells are numbers
(an empty cell leaves that parameter out of the sample). A row that does not fit (bad timestamp,
a value that is not a finite number, too many or too few cells) becomes a dead letter naming the
row; the replay goes on.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

from pydantic import ValidationError

from schemas.dead_letter import DeadLetter, reject
from schemas.process import ProcessSample

REQUIRED_COLUMNS = ("ts", "machine_id")


class CsvProcessSource:
    def __init__(self, path: Path, line_id: str, units: dict[str, str] | None = None) -> None:
        if not path.is_file():
            raise FileNotFoundError(f"process CSV {path} does not exist")
        self.path, self.line_id, self.units = path, line_id, units or {}
        self.name = f"csv:{path}"

    def samples(self) -> Iterator[ProcessSample | DeadLetter]:
        with self.path.open(newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            header = [name.strip() for name in next(reader, [])]
            missing = [name for name in REQUIRED_COLUMNS if name not in header]
            if missing:
                yield reject("process", "malformed_header", f"missing columns {missing}", f"{self.path}:1")
                return
            for row in reader:
                if row:
                    yield self._sample(header, row, f"{self.path}:{reader.line_num}")

    def _sample(self, header: list[str], row: list[str], ref: str) -> ProcessSample | DeadLetter:
        excerpt = f"{ref}: {','.join(row)}"
        if len(row) != len(header):
            return reject("process", "malformed_row", f"{len(row)} cells, header has {len(header)}", excerpt)
        cells = dict(zip(header, (cell.strip() for cell in row), strict=True))
        try:
            params = {
                name: float(value)
                for name, value in cells.items()
                if name not in REQUIRED_COLUMNS and value != ""
            }
            units = {name: unit for name, unit in self.units.items() if name in params}
            return ProcessSample(
                line_id=self.line_id,
                machine_id=cells["machine_id"],
                ts=datetime.fromisoformat(cells["ts"]),
                params=params,
                units=units,
            )
        except (ValueError, ValidationError) as err:
            detail = str(err).splitlines()[0] if not isinstance(err, ValidationError) else _first_error(err)
            return reject("process", "malformed_row", detail, excerpt)

    def close(self) -> None:
        pass


def _first_error(err: ValidationError) -> str:
    first = err.errors()[0]
    where = ".".join(str(part) for part in first["loc"])
    return f"{where}: {first['msg']}"
