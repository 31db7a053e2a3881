"""The packages under services/ import each other in one direction only: no loops.

Every import is counted, those inside functions too (a lazy import is still a dependency). Only
the commands package (and the ``linewatch`` entry point) wires the others together.
"""

from __future__ import annotations

import ast
from pathlib import Path

SERVICES = Path(__file__).resolve().parents[1] / "services"


def unit(module: str) -> str:
    """The package (or top-level module) of ``services.<unit>...``."""
    return module.split(".")[1]


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in SERVICES.rglob("*.py"):
        relative = path.relative_to(SERVICES.parent).with_suffix("")
        here = unit(".".join(relative.parts)) if len(relative.parts) > 2 else relative.parts[1]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            for name in names:
                if name.startswith("services.") and unit(name) != here:
                    graph.setdefault(here, set()).add(unit(name))
    return graph


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import loop, as the path around it, or None."""
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt] if nxt in path else [*path, nxt]
            if nxt not in state and (found := visit(nxt, [*path, nxt])):
                return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


def test_no_package_loops() -> None:
    graph = import_graph()
    assert {"steps", "inference", "stream", "api"} <= set(graph)
    assert cycle(graph) is None, " -> ".join(cycle(graph) or [])


def test_only_the_commands_wire_the_packages_together() -> None:
    graph = import_graph()
    users = sorted(unit for unit, used in graph.items() if "commands" in used)
    assert set(users) <= {"cli"}, users


def test_the_steps_know_no_runtime() -> None:
    assert not import_graph()["steps"] & {"stream", "api", "inference", "commands", "config"}


def test_the_loop_finder_finds_a_loop() -> None:
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
