"""The shape of the code, read from the source: import direction, no import circles, small units.

`engines` ← `worker` → `producer`: a web app installs only the producer, the engines know nothing
of Redis, and no module of `vecq.*` takes part in an import circle -- imports inside functions
included (the engines' circle of wave 1 ran through those).  Imports under `TYPE_CHECKING` never
run and are left out.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("engines", "producer", "worker")
#: Which parts each part may import (besides itself).
ALLOWED = {"engines": set(), "producer": set(), "worker": {"engines", "producer"}}
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


def _modules() -> dict[str, Path]:
    out = {}
    for part in PARTS:
        for path in sorted((ROOT / part).rglob("*.py")):
            rel = path.relative_to(ROOT).with_suffix("")
            names = list(rel.parts)
            if names[-1] == "__init__":
                names.pop()
            out[".".join(["vecq", *names])] = path
    return out


def _runtime_imports(tree: ast.Module) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement but those under `if TYPE_CHECKING:`."""
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in skipped:
            yield node


def _targets(module: str, path: Path, node: ast.Import | ast.ImportFrom, known: set[str]) -> set[str]:
    """The vecq modules an import statement names (a name imported from a package counts as its
    submodule when there is one)."""
    if isinstance(node, ast.Import):
        bases = [alias.name for alias in node.names]
        return {b for b in bases if b in known}
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    if node.level:
        for _ in range(node.level - 1):
            package = package.rpartition(".")[0]
        base = f"{package}.{node.module}" if node.module else package
    else:
        base = node.module or ""
    found = {f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in known}
    if base in known and len(found) < len(node.names):
        found.add(base)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        edges = set()
        for node in _runtime_imports(tree):
            edges |= _targets(module, path, node, known)
        graph[module] = edges - {module}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_module_of_vecq_is_in_an_import_circle() -> None:
    assert _cycles(import_graph()) == []


def test_imports_point_one_way_engines_worker_producer() -> None:
    wrong = []
    for module, targets in import_graph().items():
        part = module.split(".")[1]
        for target in targets:
            other = target.split(".")[1]
            if other != part and other not in ALLOWED[part]:
                wrong.append(f"{module} -> {target}")
    assert wrong == []


def test_the_bench_package_is_loaded_only_by_the_command_line() -> None:
    users = {
        module
        for module, targets in import_graph().items()
        if any(t.startswith("vecq.worker.bench") for t in targets)
        and not module.startswith("vecq.worker.bench")
    }
    assert users <= {"vecq.worker.cli"}


def test_the_graph_sees_a_circle_through_a_function_level_import(tmp_path: Path) -> None:
    """The checker itself: an import inside a function still closes a circle."""
    a = ast.parse("def f():\n    from .b import x\n")
    b = ast.parse("from .a import y\n")
    known = {"vecq.engines.a", "vecq.engines.b"}
    graph = {
        "vecq.engines.a": set().union(
            *(_targets("vecq.engines.a", tmp_path / "a.py", n, known) for n in _runtime_imports(a))
        ),
        "vecq.engines.b": set().union(
            *(_targets("vecq.engines.b", tmp_path / "b.py", n, known) for n in _runtime_imports(b))
        ),
    }
    assert _cycles(graph) == [["vecq.engines.a", "vecq.engines.b"]]


@pytest.mark.parametrize("part", PARTS)
def test_modules_and_functions_stay_small(part: str) -> None:
    """STYLE.md: modules under ~400 lines, functions under ~60."""
    too_long = []
    for path in sorted((ROOT / part).rglob("*.py")):
        source = path.read_text(encoding="utf-8")
        rel = path.relative_to(ROOT)
        if len(source.splitlines()) > MAX_MODULE_LINES:
            too_long.append(f"{rel}: {len(source.splitlines())} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{rel}:{node.lineno} {node.name}: {length} lines")
    assert too_long == []
