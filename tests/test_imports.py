"""vramplan's import graph has no cycle.

Every ``import`` and ``from ... import`` in every module file is an edge, at any depth (inside
functions too), relative imports resolved; imports under ``if TYPE_CHECKING:`` are not. Importing
a package is an edge to its ``__init__``; ``from pkg import name`` where ``name`` is a submodule
is an edge to that submodule, and any other name is an edge to ``pkg``'s ``__init__``.
Importing a module runs its parent packages' ``__init__`` first, so each of them is an edge
too, except the importer's own packages (a submodule importing a sibling while its package
initializes is what packages do): ``frameworks.axolotl`` importing ``emit.axolotl`` depends on
``emit/__init__`` and all it imports.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import vramplan

ROOT = Path(vramplan.__file__).parent


def module_files(root: Path = ROOT) -> dict[str, Path]:
    """Every module of the package at ``root`` by dotted name (a package by its own name, for its
    ``__init__``)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import node, at any depth, except the body of ``if TYPE_CHECKING:``."""
    out: list[ast.Import | ast.ImportFrom] = []
    todo: list[ast.AST] = [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            out.append(node)
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))
    return out


def edges(modules: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the package modules it imports."""
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in _imports(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - (node.level - 1)]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                subs = [f"{source}.{a.name}" for a in node.names if f"{source}.{a.name}" in modules]
                targets = subs + ([source] if len(subs) < len(node.names) else [])
            found = {t for t in targets if t in modules}
            graph[name] |= {p for t in found for p in _parents(t) if p in modules and not _within(name, p)}
            graph[name] |= found - {name}
    return graph


def _parents(module: str) -> list[str]:
    """The packages Python imports before ``module``: ``a.b.c`` -> ``a``, ``a.b``."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _within(module: str, package: str) -> bool:
    """``module`` is ``package`` or inside it."""
    return module == package or module.startswith(package + ".")


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as ``[a, b, ..., a]``, or None (depth-first search, three colours)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_walker_sees_a_cycle() -> None:
    """The search finds a cycle where there is one and none in a chain."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


PACKAGE = {
    "__init__.py": "from pkg.sub import leaf\n",
    "sub/__init__.py": "",
    "sub/leaf.py": "import pkg.typed\n",  # an import of a module: an edge to it
    "sub/inner.py": "def f():\n    from . import leaf\n    from ..other import NAME\n",
    "other.py": "from typing import TYPE_CHECKING\nNAME = 1\nif TYPE_CHECKING:\n    from pkg.sub import inner\n",
    "typed.py": "import pkg\n",  # an import of a package: an edge to its __init__
}


def test_the_walker_reads_every_kind_of_import(tmp_path: Path) -> None:
    """A function-level import, relative imports, ``from pkg import submodule`` and ``import pkg``
    are edges; an import under ``if TYPE_CHECKING:`` is not."""
    for name, text in PACKAGE.items():
        (tmp_path / "pkg" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "pkg" / name).write_text(text)
    graph = edges(module_files(tmp_path / "pkg"))
    assert graph == {
        "pkg": {"pkg.sub.leaf", "pkg.sub"},
        "pkg.sub": set(),
        "pkg.sub.leaf": {"pkg.typed"},
        "pkg.sub.inner": {"pkg.sub.leaf", "pkg.other"},
        "pkg.other": set(),
        "pkg.typed": {"pkg"},
    }
    assert find_cycle(graph) == ["pkg", "pkg.sub.leaf", "pkg.typed", "pkg"]


CROSSED = {
    "__init__.py": "",
    "emit/__init__.py": "from pkg.emit.emitter import emit\n",
    "emit/emitter.py": "from pkg.trainers import NAMES\n\ndef emit():\n    return NAMES\n",
    "emit/files.py": "FILES = 1\n",
    "trainers/__init__.py": "from pkg.trainers import one\n\nNAMES = ('one',)\n",
    "trainers/one.py": "from pkg.emit import files\n",
}


@pytest.mark.e2e
def test_a_cycle_through_a_package_init_is_a_cycle(tmp_path: Path) -> None:
    """A module that imports a submodule of another package runs that package's ``__init__``
    first: a cycle through it fails at import, and the walker sees it."""
    import subprocess
    import sys

    for name, text in CROSSED.items():
        (tmp_path / "pkg" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "pkg" / name).write_text(text)
    run = subprocess.run([sys.executable, "-c", "import pkg.trainers"], cwd=tmp_path, capture_output=True, text=True)
    assert "ImportError" in run.stderr  # partially initialized module 'pkg.trainers'
    cycle = find_cycle(edges(module_files(tmp_path / "pkg")))
    assert cycle is not None and {"pkg.emit", "pkg.trainers"} <= set(cycle)


def test_the_package_is_walked() -> None:
    """Every module file is read, and an import inside a function in the real tree is an edge."""
    graph = edges(module_files())
    assert {"vramplan.planner", "vramplan.results", "vramplan.memory.phases", "vramplan.trace.build"} <= set(graph)
    assert "vramplan.render" in graph["vramplan.results"]  # Plan.__rich__ imports it inside the method


def test_results_reads_only_data_modules() -> None:
    """results.py imports leaf data modules, and render.py for a plan's picture (rich, inside the
    method); nothing it imports reaches it back (render.py names it under TYPE_CHECKING only)."""
    graph = edges(module_files())
    leaves = {f"vramplan.{m}" for m in ("setup", "gpus", "params", "units", "errors", "spec", "limits", "tables")}
    assert graph["vramplan.results"] <= leaves | {"vramplan.render"}, graph["vramplan.results"]
    seen, todo = set(), list(graph["vramplan.results"])
    while todo:
        mod = todo.pop()
        if mod not in seen:
            seen.add(mod)
            todo.extend(graph[mod])
    assert "vramplan.results" not in seen


def test_no_import_cycle() -> None:
    cycle = find_cycle(edges(module_files()))
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])
