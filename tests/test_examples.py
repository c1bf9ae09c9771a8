"""examples/ stays what the code emits."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_scenario3_configs_are_current() -> None:
    sys.path.insert(0, str(ROOT / "examples" / "scenario3"))
    try:
        import regenerate
    finally:
        sys.path.pop(0)
    fresh = regenerate.emitted()
    assert set(fresh) == {"trl", "swift", "llamafactory", "axolotl"}
    for target, files in fresh.items():
        on_disk = {p.name: p.read_text() for p in (ROOT / "examples" / "scenario3" / target).iterdir()}
        assert on_disk == files, f"examples/scenario3/{target} is stale: run examples/scenario3/regenerate.py"
