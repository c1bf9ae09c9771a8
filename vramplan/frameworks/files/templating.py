"""The emitted Python scripts' templates (``vramplan/frameworks/files/templates/*.py``): real Python files,
which ruff and mypy check, rendered by keeping or dropping their marked blocks and writing each
value at its marker. They ship in the wheel and are read as data (:func:`source`); nothing
imports them (they import torch and trl) and their folder has no ``__init__.py``.

A template is the script as emitted plus directive comments, each on a line of its own and
dropped from the output:

- ``# <if NAME>`` ... ``# </if NAME>``: kept when ``blocks[NAME]`` is true, else dropped with
  its lines. Every block has a choice and every choice a block.
- ``# <shared NAME>`` ... ``# </shared NAME>``: always kept; another template includes it.
- ``# <include FILE NAME>`` ... ``# </include NAME>``: FILE's shared block NAME, at the same
  indentation; the lines between stand in for it for the checkers and are dropped.
- ``# <template-only>`` ... ``# </template-only>``: dropped: the markers typed for the checkers.
- ``# fmt: off`` / ``# fmt: on`` and ``# isort: off`` / ``# isort: on``: the formatters', around
  code whose emitted layout is kept as it is.

A marker is an upper-case dunder name (``__MODEL__``). Inside a line it is replaced by its value;
a line that holds only ``**__NAME__,`` (a dict's entries) is replaced by the value's lines. All
values are written in one pass, so a value holding a marker's text (a folder named ``__DATA__``)
stays as it is. A marker without a value, or a value without its marker, is an error.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import cache
from importlib import resources

#: a directive line: indentation, ``/`` when it closes, the kind, its arguments
DIRECTIVE = re.compile(
    r"(?P<indent> *)# <(?P<close>/?)(?P<kind>if|shared|include|template-only)(?P<args>(?: [\w.]+)*)>"
)
FORMATTER = re.compile(r" *# (?:fmt|isort): (?:off|on)")
MARKER = re.compile(r"__[A-Z][A-Z0-9_]*__")
#: a whole-line marker (group 1) or a marker inside a line
_FILL = re.compile(r"^ *\*\*(__[A-Z][A-Z0-9_]*__),\n|__[A-Z][A-Z0-9_]*__", re.MULTILINE)


@cache
def source(name: str) -> str:
    """The template file ``name`` as shipped (``vramplan/frameworks/files/templates/<name>``)."""
    return (resources.files("vramplan.frameworks.files") / "templates" / name).read_text(encoding="utf-8")


def _lines(text: str) -> list[str]:
    """``text``'s lines, each with its ``\\n`` (``str.splitlines`` would break at other characters too)."""
    parts = text.split("\n")
    return [p + "\n" for p in parts[:-1]] + ([parts[-1]] if parts[-1] else [])


def _directive(line: str) -> re.Match[str] | None:
    return DIRECTIVE.fullmatch(line.rstrip("\n"))


def shared_block(name: str, block: str) -> tuple[str, list[str]]:
    """(indentation, lines) of the shared block ``block`` in template ``name``, without its tags."""
    lines = _lines(source(name))
    start: tuple[int, str] | None = None
    for i, line in enumerate(lines):
        m = _directive(line)
        if m and m["kind"] == "shared" and m["args"].split() == [block]:
            if not m["close"]:
                start = (i, m["indent"])
            elif start is not None:
                return start[1], lines[start[0] + 1 : i]
    raise AssertionError(f"templates/{name} has no shared block {block}")


def expanded(name: str) -> list[str]:
    """Template ``name``'s lines with each include replaced by the block it names."""
    out: list[str] = []
    lines = iter(_lines(source(name)))
    for line in lines:
        m = _directive(line)
        if not (m and m["kind"] == "include"):
            out.append(line)
            continue
        args = m["args"].split()
        if m["close"] or len(args) != 2:
            raise AssertionError(f"templates/{name}: {line.strip()} is not '# <include FILE NAME>'")
        for inner in lines:  # the stand-ins, up to the closing tag
            end = _directive(inner)
            if end and end["kind"] == "include" and end["close"]:
                if end["args"].split() != args[1:]:
                    raise AssertionError(f"templates/{name}: {inner.strip()} closes '{line.strip()}'")
                break
        else:
            raise AssertionError(f"templates/{name}: {line.strip()} is not closed")
        indent, block = shared_block(args[0], args[1])
        if indent != m["indent"]:
            raise AssertionError(f"templates/{name}: {line.strip()} is not at its block's indentation")
        out.extend(block)
    return out


def select(name: str, lines: list[str], blocks: Mapping[str, bool]) -> str:
    """The text with every directive line dropped and each ``if`` block kept or dropped."""
    out: list[str] = []
    open_: list[tuple[str, str, bool]] = []  # (kind, name, kept)
    chosen: set[str] = set()
    for number, line in enumerate(lines, 1):
        m = _directive(line)
        if m is None:
            if not FORMATTER.fullmatch(line.rstrip("\n")) and all(kept for _, _, kept in open_):
                out.append(line)
            continue
        kind, arg = m["kind"], m["args"].strip()
        if m["close"]:
            if not open_ or open_[-1][:2] != (kind, arg):
                raise AssertionError(f"templates/{name}:{number}: {line.strip()} closes no open block")
            open_.pop()
        elif kind == "if":
            if arg not in blocks:
                raise AssertionError(f"templates/{name}:{number}: no choice for block {arg}")
            chosen.add(arg)
            open_.append((kind, arg, blocks[arg]))
        elif kind in ("shared", "template-only"):
            open_.append((kind, arg, kind == "shared"))
        else:
            raise AssertionError(f"templates/{name}:{number}: {line.strip()} left after expanding includes")
    if open_:
        raise AssertionError(f"templates/{name}: block {open_[-1][1] or open_[-1][0]} is not closed")
    if set(blocks) - chosen:
        raise AssertionError(f"templates/{name} has no block {', '.join(sorted(set(blocks) - chosen))}")
    return "".join(out)


def fill(name: str, text: str, values: Mapping[str, str]) -> str:
    """Every marker replaced by its value, in one pass."""
    present = set(MARKER.findall(text))
    if present != set(values):
        unfilled, unused = sorted(present - set(values)), sorted(set(values) - present)
        raise AssertionError(f"templates/{name}: markers without a value {unfilled}, values without a marker {unused}")

    def value(m: re.Match[str]) -> str:
        if m[1]:
            return values[m[1]] + "\n" if values[m[1]] else ""
        return values[m[0]]

    return _FILL.sub(value, text)


def render(name: str, blocks: Mapping[str, bool], values: Mapping[str, str]) -> str:
    """Template ``name`` as emitted: includes expanded, ``if`` blocks chosen by ``blocks``,
    markers filled from ``values``."""
    return fill(name, select(name, expanded(name), blocks), values)
