"""The code's shape, checked in CI (issue 23): no import cycle, no oversized module, class or function.

Two guards a reviewer would otherwise apply by eye:

- **No import cycle** among the project's modules (`services`, `adapters`, `statemachine`, `bench`;
  the generated `services.api` stubs excluded). The import graph is grimp's (the library
  import-linter is built on), so an import written inside a function or under `TYPE_CHECKING` is an
  edge too: a cycle held together by lazy imports is still a cycle. Any strongly connected
  component of more than one module fails, named with one of its loops.
- **Size**: no production module over ``MAX_MODULE_LINES`` lines, no class with more than
  ``MAX_METHODS`` methods, no function over ``MAX_FUNCTION_LINES`` lines, unless a reason is written
  next to it: a ``# size: <reason>`` comment on the ``def``/``class`` line (for a module: on a line
  of its own before the first statement), or an entry of ``ALLOWED`` below with its reason.
"""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("services", "adapters", "statemachine", "bench")
GENERATED = ("services.api",)

MAX_MODULE_LINES = 450
MAX_METHODS = 30
MAX_FUNCTION_LINES = 60

# Over the limits before the restructuring of issue 23 and not split yet: each is a next step
# (docs/architecture.md, "Not done yet").
_SPLIT = "not split yet (docs/architecture.md: Not done yet)"
# Benchmark scripts: one scenario, read top to bottom.
_BENCH = "a benchmark scenario, read top to bottom"

# "path" for a module, "path::Class" for a class, "path::Class.method" / "path::function" for a
# function, each with the reason it may be over its limit. An entry that is no longer over its limit
# fails the test, so the list only shrinks.
ALLOWED: dict[str, str] = {
    "adapters/wapi/webhooks.py": _SPLIT,
    "adapters/wapi/webhooks.py::normalize_inbound": _SPLIT,
    "adapters/wapi/webhooks.py::_parse_body": _SPLIT,
    "bench/__main__.py": _BENCH,
    "bench/__main__.py::bench_database": _BENCH,
    "bench/detection.py": _BENCH,
    "bench/detection.py::main": _BENCH,
    "bench/detection.py::run_shape": _BENCH,
    "bench/sweep_split.py::_split": _BENCH,
}

_REASON = re.compile(r"#\s*size:\s*\S")


def _sources() -> Iterator[Path]:
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel.startswith("services/api/") or "/migrations/" in rel:
                continue
            yield path


def _module_reason(lines: list[str], tree: ast.Module) -> bool:
    first = tree.body[0].lineno if tree.body else len(lines)
    if tree.body and isinstance(tree.body[0], ast.Expr) and isinstance(tree.body[0].value, ast.Constant):
        first = tree.body[1].lineno if len(tree.body) > 1 else len(lines)
    return any(_REASON.search(line) for line in lines[: first - 1])


def _line_reason(lines: list[str], node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> bool:
    # The def/class line, or the decorator lines above it, or a signature spread over lines up to
    # the first statement of the body.
    start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
    end = node.body[0].lineno - 1 if node.body else node.lineno
    return any(_REASON.search(line) for line in lines[start - 1 : max(end, node.lineno)])


def _functions(body: list[ast.stmt], prefix: str) -> Iterator[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    for node in body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield f"{prefix}{node.name}", node
            yield from _functions(node.body, f"{prefix}{node.name}.")
        elif isinstance(node, ast.ClassDef):
            yield from _functions(node.body, f"{prefix}{node.name}.")


def _classes(body: list[ast.stmt], prefix: str) -> Iterator[tuple[str, ast.ClassDef]]:
    for node in body:
        if isinstance(node, ast.ClassDef):
            yield f"{prefix}{node.name}", node
            yield from _classes(node.body, f"{prefix}{node.name}.")


def oversized() -> dict[str, str]:
    """Every module, class and function over its limit without a reason next to it: key → measure."""
    found: dict[str, str] = {}
    for path in _sources():
        rel = path.relative_to(ROOT).as_posix()
        text = path.read_text()
        lines = text.splitlines()
        tree = ast.parse(text, rel)
        if len(lines) > MAX_MODULE_LINES and not _module_reason(lines, tree):
            found[rel] = f"{len(lines)} lines (max {MAX_MODULE_LINES})"
        for name, cls in _classes(tree.body, ""):
            methods = sum(isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) for n in cls.body)
            if methods > MAX_METHODS and not _line_reason(lines, cls):
                found[f"{rel}::{name}"] = f"{methods} methods (max {MAX_METHODS})"
        for name, fn in _functions(tree.body, ""):
            length = (fn.end_lineno or fn.lineno) - fn.lineno + 1
            if length > MAX_FUNCTION_LINES and not _line_reason(lines, fn):
                found[f"{rel}::{name}"] = f"{length} lines (max {MAX_FUNCTION_LINES})"
    return found


def test_no_module_class_or_function_is_oversized_without_a_reason() -> None:
    found = oversized()
    unexplained = {key: measure for key, measure in found.items() if key not in ALLOWED}
    assert not unexplained, "over the size limits, with no `# size: <reason>` next to it:\n" + "\n".join(
        f"  {key}: {measure}" for key, measure in sorted(unexplained.items())
    )


def test_the_allowlist_only_names_what_is_still_oversized() -> None:
    found = oversized()
    stale = sorted(key for key in ALLOWED if key not in found)
    assert not stale, "no longer over the limits (remove from ALLOWED): " + ", ".join(stale)
    assert all(reason.strip() for reason in ALLOWED.values())


def import_cycles() -> list[list[str]]:
    """Strongly connected components (more than one module) of the project's import graph."""
    sys.path.insert(0, str(ROOT))  # `bench` is a folder of the repository, not an installed package
    try:
        graph = grimp.build_graph(*PACKAGES, include_external_packages=False, cache_dir=None)
    finally:
        sys.path.remove(str(ROOT))
    modules = {m for m in graph.modules if not m.startswith(GENERATED)}
    edges = {m: sorted(graph.find_modules_directly_imported_by(m) & modules) for m in modules}
    # Tarjan's algorithm, iterative (no recursion limit on a deep graph).
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    for root in sorted(modules):
        if root in index:
            continue
        work: list[tuple[str, int]] = [(root, 0)]
        while work:
            node, i = work.pop()
            if i == 0:
                index[node] = low[node] = len(index)
                stack.append(node)
                on_stack.add(node)
            children = edges[node]
            if i < len(children):
                work.append((node, i + 1))
                child = children[i]
                if child not in index:
                    work.append((child, 0))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            for child in children:
                if child in on_stack and index[child] > index[node]:
                    low[node] = min(low[node], low[child])
            if low[node] == index[node]:
                component: list[str] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    return components


def test_no_import_cycle_between_modules() -> None:
    cycles = import_cycles()
    assert not cycles, "import cycles (lazy and TYPE_CHECKING imports count):\n" + "\n".join(
        "  " + " ↔ ".join(component) for component in cycles
    )
