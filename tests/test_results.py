"""Results as data (vramplan/results.py): the public names, emit as a function of a plan, notes
with codes and numbers."""

from __future__ import annotations

import subprocess
import sys

import pytest

import vramplan
from vramplan import emit, plan
from vramplan.results import Alternative, CardEstimate, Estimate, Peak, Plan


def test_old_paths_are_the_results_classes() -> None:
    from vramplan import memory, planner
    from vramplan.memory import phases

    assert memory.Estimate is phases.Estimate is vramplan.Estimate is Estimate
    assert phases.CardEstimate is CardEstimate
    assert (planner.Plan, planner.Alternative, planner.Peak) == (Plan, Alternative, Peak)
    assert (vramplan.Plan, vramplan.Alternative, vramplan.Peak) == (Plan, Alternative, Peak)


def test_a_plan_does_not_emit_itself_emit_does() -> None:
    p = plan("qwen2.5-0.5b", gpu="a100-80g", method="lora", seq_len=256)
    assert not hasattr(p, "emit")
    from vramplan.emit.common import emit as function

    assert emit(p, "swift", data="d.jsonl", force=False) == function(p, "swift", data="d.jsonl")


@pytest.mark.e2e
@pytest.mark.parametrize("first", ["", "import vramplan.emit.trl", "import vramplan; vramplan.emit"])
def test_from_vramplan_import_emit_in_any_order(first: str) -> None:
    """Whatever imported the ``vramplan.emit`` package first, ``from vramplan import emit`` calls emit()."""
    code = f"""{first}
from vramplan import emit, plan
import vramplan.emit.common
p = plan("qwen2.5-0.5b", gpu="a100-80g", method="lora", seq_len=256)
assert emit(p, "trl").files == vramplan.emit.common.emit(p, "trl").files
assert vramplan.emit.trl.__name__ == "vramplan.emit.trl"
"""
    subprocess.run([sys.executable, "-c", code], check=True)
