"""The package's dependencies run one way (issue #21): esr_kernels never imports esr_models,
esr_models' sub-packages import each other in one order (LAYERS), and no module imports another
that (transitively) imports it back.

The graph is read from the source with ``ast``, not by importing: every ``import``/``from ...
import`` counts, at module level or inside a function, since a function-local import that only
dodges a cycle still ties the two modules together. ``from pkg import name`` counts as an edge to
``pkg.name`` when that is a module, else to ``pkg``. A package's ``__init__`` is its own node,
and importing a module of another package counts as importing that package too (Python runs its
``__init__`` first).
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
            found |= {pkg for pkg in _packages_run(name, importer) if pkg in modules}
    return found - {importer}


def _packages_run(name: str, importer: str) -> list[str]:
    """Importing ``a.b.c`` runs ``a/__init__`` and ``a/b/__init__`` first: those the importer is
    not already inside of (its own packages have started when it runs), then ``a.b.c``."""
    parts = name.split(".") if name else []
    chain = [".".join(parts[:i]) for i in range(1, len(parts) + 1)]
    return [pkg for pkg in chain if pkg == name or not importer.startswith(pkg + ".")]


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


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per group of modules that import each other (strongly connected component)."""
    found, left = [], {a: set(b) for a, b in graph.items()}
    while (cycle := find_cycle(left)) is not None:
        found.append(cycle)
        group = _reaching(left, cycle[0]) & _reached_by(left, cycle[0])
        left = {a: b - group for a, b in left.items() if a not in group}
    return found


def _reaching(graph, start) -> set[str]:
    seen, todo = {start}, [start]
    while todo:
        for b in graph.get(todo.pop(), ()):
            if b not in seen:
                seen.add(b)
                todo.append(b)
    return seen


def _reached_by(graph, target) -> set[str]:
    reverse: dict[str, set[str]] = {}
    for a, targets in graph.items():
        for b in targets:
            reverse.setdefault(b, set()).add(a)
    return _reaching(reverse, target)


def test_the_graph_sees_the_package():
    """Guards the walk itself: the known edges appear, relative imports resolved."""
    graph = import_graph()
    assert "esr_kernels.policy" in graph and "esr_models.cli" in graph
    assert "esr_kernels.contract" in graph["esr_kernels.policy"]
    assert "esr_models.cli.train" in graph["esr_models.cli"]  # ``from . import ..., train, ...``
    assert "esr_models.infer.loading" in graph["esr_models.cli.info"]  # ``from ..infer.loading import``
    # ``from ..training.recipes import`` runs esr_models/training/__init__.py, and that counts
    assert {"esr_models.training", "esr_models.training.recipes"} <= graph["esr_models.cli.train"]


def test_kernels_never_import_models():
    upward = sorted(f"{a} -> {b}" for a, targets in import_graph().items() if a.startswith("esr_kernels")
                    for b in targets if b.startswith("esr_models"))
    assert not upward, "esr_kernels imports esr_models: " + ", ".join(upward)


# esr_models' sub-packages in dependency order: a module imports only from its own sub-package and
# those before it (so arch/ imports nothing of fused/, infer/, io/, interop/ or cli/; io/ and
# infer/ never import cli/). The package's own __init__ (the public API) may import any of them.
LAYERS = ("arch", "fused", "io", "infer", "evaluation", "training", "interop", "cli")


def _layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if parts[0] == "esr_models" and len(parts) > 1 and parts[1] in LAYERS else None


def test_models_subpackages_import_one_way():
    modules = [m for m in import_graph() if m.startswith("esr_models.")]
    assert {m.split(".")[1] for m in modules} - {"data"} == set(LAYERS), "a sub-package is not in LAYERS"
    upward = sorted(f"{a} -> {b}" for a, targets in import_graph().items() if _layer(a) is not None
                    for b in targets if b.startswith("esr_models") and (_layer(b) is None or _layer(b) > _layer(a)))
    assert not upward, "imports against the order " + " < ".join(LAYERS) + ": " + ", ".join(upward)


def test_no_import_cycle():
    found = cycles(import_graph())
    assert not found, "import cycles: " + "; ".join(" -> ".join(c) for c in found)


def test_find_cycle_reports_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    two = {"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"c", "a"}}
    assert cycles(two) == [["a", "b", "a"], ["c", "d", "c"]]
