"""The package's shape: small modules. A module over LIMIT lines says why in its docstring,
in a sentence that starts ``Longer than 500 lines:``; none does today."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "vramplan"
LIMIT = 500
REASON = "Longer than 500 lines:"


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "templates" not in p.parts)


def test_no_module_is_long_without_a_reason() -> None:
    long = []
    for path in _modules():
        lines = len(path.read_text().splitlines())
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        if lines > LIMIT and REASON not in doc:
            long.append(f"{path.relative_to(PACKAGE.parent)}: {lines} lines")
    assert not long, "modules over 500 lines with no reason in their docstring:\n" + "\n".join(long)


def test_the_check_sees_every_module() -> None:
    names = {p.relative_to(PACKAGE).as_posix() for p in _modules()}
    assert {"planner.py", "cli.py", "memory/phases.py", "frameworks/files/common.py"} <= names
