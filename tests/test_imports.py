"""The import graph of rsdlib: no cycle among the decoding engine's modules (issue 15, "one engine").

The graph has an edge a -> b for every import of rsdlib module b in module a, at module level AND
inside functions (a function-level import only postpones a cycle, it does not remove it).
"""

from __future__ import annotations

import ast
from pathlib import Path

import rsdlib

PACKAGE_DIR = Path(rsdlib.__file__).resolve().parent
# modules that must import each other in one direction only (outside this set, at ae4ccfa, one cycle remains:
# distributed, evaluate, launch, reproduce, traces and train, e.g. distributed <-> traces, launch <-> evaluate)
ACYCLIC = frozenset({"engine", "sampling", "speculative", "decoding", "memory"})


def rsdlib_imports(path: Path) -> set[str]:
    """Names of the rsdlib modules that the module at ``path`` imports, anywhere in its source."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from rsdlib import a, b` imports modules a and b; `from rsdlib.a import x` imports a
            names = ([f"rsdlib.{alias.name}" for alias in node.names] if node.module == "rsdlib" else [node.module])
        elif isinstance(node, ast.ImportFrom) and node.level == 1:  # `from . import a` / `from .a import x`
            names = ([f"rsdlib.{alias.name}" for alias in node.names] if node.module is None
                     else [f"rsdlib.{node.module}"])
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "rsdlib" and len(parts) > 1 and (PACKAGE_DIR / f"{parts[1]}.py").exists():
                found.add(parts[1])
    return found


def import_graph() -> dict[str, set[str]]:
    """{module: rsdlib modules it imports} over every module of the package (``__init__`` excluded)."""
    return {p.stem: rsdlib_imports(p) - {p.stem} for p in sorted(PACKAGE_DIR.glob("*.py")) if p.stem != "__init__"}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted, sorted."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def test_the_graph_sees_module_and_function_level_imports():
    graph = import_graph()
    assert ACYCLIC <= set(graph)
    assert "engine" in graph["decoding"] and "sampling" in graph["speculative"]
    assert "config" in graph["decoding"]  # DecodingConfig.__post_init__ imports rsdlib.config inside a function
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle_among_the_engine_modules():
    graph = import_graph()
    sub = {m: graph[m] & ACYCLIC for m in ACYCLIC}
    assert cycles(sub) == [], f"import cycle among {sorted(ACYCLIC)}: {cycles(sub)}"
    # and no cycle of the whole package passes through them
    touching = [c for c in cycles(graph) if ACYCLIC & set(c)]
    assert touching == [], f"import cycles through the engine modules: {touching}"
