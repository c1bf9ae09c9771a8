"""The golden plans (tests/golden/cases.py): the JSON of 440 plans, emitted file sets, CLI
runs and refusals is byte-equal to what was recorded. Code may move; a number, a field or a
file may change only on purpose, by regenerating the file in the same commit.

``RENAMED`` lists each field whose shape changed on purpose since the recording, with the
function that maps the new shape back to the recorded one, ``ADDED`` each field added
since (left out before comparing), and ``REMOVED`` each recorded field the new shape no longer
has (dropped from the recorded side, also inside the JSON the CLI printed), so the rest stays
compared. Each entry says why."""

from __future__ import annotations

import difflib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "golden"))
import cases  # noqa: E402


def _cli_json(stdout: str) -> str:
    """A plan's ``--json`` line (cli.py: ``json.dumps`` of the plan's dump) in its recorded shape;
    any other output as it is."""
    try:
        value = json.loads(stdout)
    except ValueError:
        return stdout
    recorded = _recorded_shape(value)
    if recorded == value:
        return stdout
    # written as the CLI wrote it: json.dumps (a plan) or pydantic's compact dump (emit, measure)
    for seps, ascii_only in (((", ", ": "), True), ((",", ":"), False), ((",", ":"), True)):
        if json.dumps(value, separators=seps, ensure_ascii=ascii_only) == stdout.rstrip("\n"):
            return json.dumps(recorded, separators=seps, ensure_ascii=ascii_only) + "\n"
    return json.dumps(recorded) + "\n"


#: field -> (why it changed, new -> recorded). Emptied when the recording is made again (the
#: recording then holds the new shape); ``stdout`` stays: the CLI's ``--json`` holds a plan's dump,
#: so the entries apply inside it too.
RENAMED: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "stdout": ("a plan's --json line: the renamed fields inside it are mapped back too", _cli_json),
}
#: field -> why it was added (emptied when the recording is made again)
ADDED: dict[str, str] = {}
#: field -> why it was removed (emptied when the recording is made again)
REMOVED: dict[str, str] = {}

RECORDED = cases.read()
CASES = cases.cases()


def _recorded_shape(value: Any) -> Any:
    """``value`` with every field in RENAMED mapped back to its recorded shape, at any depth."""
    if isinstance(value, dict):
        return {
            k: RENAMED[k][1](_recorded_shape(v)) if k in RENAMED else _recorded_shape(v)
            for k, v in value.items()
            if k not in ADDED
        }
    if isinstance(value, list):
        return [_recorded_shape(v) for v in value]
    return value


def _without_removed(value: Any) -> Any:
    """The recorded ``value`` without the fields in REMOVED, at any depth, also inside a JSON
    document the CLI printed (``--json``), printed again as it was (same separators)."""
    if isinstance(value, dict):
        return {k: _without_removed(v) for k, v in value.items() if k not in REMOVED}
    if isinstance(value, list):
        return [_without_removed(v) for v in value]
    if isinstance(value, str) and value.startswith("{") and any(f'"{k}"' in value for k in REMOVED):
        text = value.rstrip("\n")
        try:
            doc = json.loads(text)
        except ValueError:
            return value
        for seps in ((", ", ": "), (",", ":")):
            if json.dumps(doc, separators=seps) == text:
                return json.dumps(_without_removed(doc), separators=seps) + value[len(text) :]
    return value


def test_the_cases_are_the_recorded_ones() -> None:
    assert [name for name, _, _ in CASES] == list(RECORDED)
    kinds = {kind for _, kind, _ in CASES}
    assert kinds == {"plan", "emit", "cli", "error"}
    assert sum(kind == "plan" for _, kind, _ in CASES) >= 300


@pytest.mark.parametrize(("name", "kind", "args"), CASES, ids=[c[0] for c in CASES])
def test_golden(name: str, kind: str, args: dict[str, Any]) -> None:
    got = json.dumps(_recorded_shape(cases.run(kind, args)), sort_keys=True, indent=1)
    want = json.dumps(_without_removed(RECORDED[name]), sort_keys=True, indent=1)
    if got != want:
        diff = "\n".join(difflib.unified_diff(want.splitlines(), got.splitlines(), "recorded", "now", lineterm="", n=2))
        pytest.fail(f"{name} changed:\n{diff[:6000]}")
