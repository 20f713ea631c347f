"""The package's layout rules (README "Layout"): small files, and dependencies that run one way.

The import graph is read from the source (every ``import`` at any depth, inside functions too, as grimp and
import-linter count them; ``if TYPE_CHECKING:`` blocks are annotations only and never run), so a lazy import
that closes a loop is found as well as a module-level one. Seen to fail on the loops it replaced: ``remote`` <->
``ndif_errors`` (the key and host, now `futurelens.ndif_config`), ``data.prefixes`` <-> ``data.table`` (what both
share, now `futurelens.data.labels`), and ``cli -> planner -> planner.calibrate -> cli``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import futurelens

PACKAGE = Path(futurelens.__file__).parent
MAX_LINES = 450


def _modules() -> dict[str, Path]:
    out = {}
    for f in PACKAGE.rglob("*.py"):
        parts = f.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


def import_graph() -> dict[str, set[str]]:
    """``{module: modules of the package it imports}``, at any depth, TYPE_CHECKING blocks left out."""
    mods = _modules()
    graph: dict[str, set[str]] = {}
    for name, f in mods.items():
        tree = ast.parse(f.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", None)) == "TYPE_CHECKING":
                node.body = []
        package = name.split(".") if f.name == "__init__.py" else name.split(".")[:-1]
        deps: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module != "__future__":
                base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else [])) \
                    if node.level else node.module or ""
                for alias in node.names:
                    deps.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in mods else base)
            elif isinstance(node, ast.Import):
                deps |= {alias.name for alias in node.names}
        graph[name] = {d for d in deps if d in mods and d != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_the_checker_finds_a_lazy_loop():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_package_imports_without_a_cycle():
    graph = import_graph()
    assert "futurelens.dispatch" in graph["futurelens.train"]  # lazy imports are read too
    assert cycles(graph) == []


def test_no_file_of_the_package_is_over_450_lines():
    long = {str(f.relative_to(PACKAGE)): n for f in PACKAGE.rglob("*.py")
            if (n := len(f.read_text().splitlines())) > MAX_LINES}
    assert long == {}
