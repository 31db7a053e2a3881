"""torch.fx tracing and model forward passes in other threads must not overlap.

While ``torch.fx`` traces a model (torchvision's ``create_feature_extractor``, ``get_graph_node_names``)
it patches ``torch.nn.Module.__call__`` for the whole process; a model running in another thread
meanwhile fails ("module is not installed as a submodule"). That happens when a running line loads
a new model (a registry promotion) while its detector threads score frames. Tracing takes
:data:`TRACE_GUARD` exclusively, scoring takes it shared: many batches score at once, a trace waits
for them to finish and new batches wait for the trace (a few hundred milliseconds per model load).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class SharedExclusive:
    """A readers-writer lock that lets a waiting writer in before new readers."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writing = False
        self._writers_waiting = 0

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            while self._writing or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            try:
                while self._writing or self._readers:
                    self._cond.wait()
            finally:
                self._writers_waiting -= 1
            self._writing = True
        try:
            yield
        finally:
            with self._cond:
                self._writing = False
                self._cond.notify_all()


TRACE_GUARD = SharedExclusive()
