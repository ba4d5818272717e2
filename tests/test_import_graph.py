"""The package's dependencies run one way (issue #21): esr_kernels never imports esr_models, and no
module imports another that (transitively) imports it back.

The graph is read from the source with ``ast``, not by importing: every ``import``/``from ...
import`` counts, at module level or inside a function, since a function-local import that only
dodges a cycle still ties the two modules together. ``from pkg import name`` counts as an edge to
``pkg.name`` when that is a module, else to ``pkg``. A package's ``__init__`` is its own node.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("esr_kernels", "esr_models")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    """Every module of the two packages, by dotted name."""
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _resolve(importer: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module a ``from`` import names (relative levels resolved against ``importer``)."""
    if node.level == 0:
        return node.module or ""
    base = importer.split(".")
    # A package's __init__ is its own "current package"; a plain module's package is its parent.
    drop = node.level - 1 if is_package else node.level
    base = base[:len(base) - drop] if drop else base
    return ".".join(base + ([node.module] if node.module else []))


def _targets(importer: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package modules that ``importer`` imports anywhere in its file."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(importer, is_package, node)
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for name in names:
            # ``import a.b.c`` imports a.b.c; keep the longest prefix that is one of ours.
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != importer:
                found.add(name)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _targets(name, path, modules) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None (iterative DFS)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in sorted(graph):
        if state.get(start):
            continue
        path, stack = [start], [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
                continue
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph.get(nxt, ()))))
    return None


def test_the_graph_sees_the_package():
    """Guards the walk itself: the known edges appear, relative imports resolved."""
    graph = import_graph()
    assert "esr_kernels.policy" in graph and "esr_models.cli" in graph
    assert "esr_kernels.contract" in graph["esr_kernels.policy"]
    assert "esr_models.loading" in graph["esr_models.cli"]


def test_kernels_never_import_models():
    upward = sorted(f"{a} -> {b}" for a, targets in import_graph().items() if a.startswith("esr_kernels")
                    for b in targets if b.startswith("esr_models"))
    assert not upward, "esr_kernels imports esr_models: " + ", ".join(upward)


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_find_cycle_reports_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
