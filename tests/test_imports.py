"""The import graph of rsdlib: no import cycle anywhere in the package (issue 15).

The graph has an edge a -> b for every import of rsdlib module b in module a, at module level AND
inside functions (a function-level import only postpones a cycle, it does not remove it). The one
exception is the body of ``if __name__ == "__main__":``: it runs only when the module is the program
(``python -m rsdlib.traces`` under torchrun), as a module named ``__main__``, so it cannot close a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import rsdlib

PACKAGE_DIR = Path(rsdlib.__file__).resolve().parent
# the decoding engine's modules (checked on their own too, so a failure names the layer that broke)
ENGINE = frozenset({"engine", "sampling", "speculative", "decoding", "memory"})


def _is_main_guard(node: ast.AST) -> bool:
    """``if __name__ == "__main__":``"""
    test = getattr(node, "test", None)
    return (isinstance(node, ast.If) and isinstance(test, ast.Compare) and isinstance(test.left, ast.Name)
            and test.left.id == "__name__" and len(test.comparators) == 1
            and isinstance(test.comparators[0], ast.Constant) and test.comparators[0].value == "__main__")


def _walk_importable(tree: ast.AST):
    """Every node of ``tree`` except those under a module-level ``if __name__ == "__main__":``."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(tree, ast.Module) and _is_main_guard(node):
            continue
        yield node
        yield from _walk_importable(node)


def rsdlib_imports(path: Path) -> set[str]:
    """Names of the rsdlib modules that the module at ``path`` imports, anywhere in its source."""
    found = set()
    for node in _walk_importable(ast.parse(path.read_text(), filename=str(path))):
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


def test_the_graph_sees_module_and_function_level_imports(tmp_path):
    graph = import_graph()
    assert ENGINE <= set(graph)
    assert "engine" in graph["decoding"] and "sampling" in graph["speculative"]
    assert "config" in graph["decoding"]  # DecodingConfig.__post_init__ imports rsdlib.config inside a function
    assert "launch" not in graph["traces"]  # its `if __name__ == "__main__":` import is not an edge
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    module = tmp_path / "m.py"
    module.write_text("from rsdlib import config\n\ndef f():\n    import rsdlib.paths\n\n"
                      "if __name__ == '__main__':\n    from rsdlib.store import run_lock\n")
    assert rsdlib_imports(module) == {"config", "paths"}


def test_no_import_cycle_among_the_engine_modules():
    graph = import_graph()
    sub = {m: graph[m] & ENGINE for m in ENGINE}
    assert cycles(sub) == [], f"import cycle among {sorted(ENGINE)}: {cycles(sub)}"


def test_no_import_cycle_anywhere_in_the_package():
    assert cycles(import_graph()) == [], "import cycles in rsdlib (each list is one strongly connected group)"
