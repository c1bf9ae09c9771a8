"""torch's own FSDP1 on two CPU processes (benchmarks/fsdp1_stream_probe.py): the streams the
pools of vramplan/memory/fsdp.py assume each allocation is made under, and AdamW's state made at
the first step (what leaves its temporaries beside the activations)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import requires

pytestmark = [pytest.mark.e2e, requires("torch", "transformers")]
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def probe() -> dict:
    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "fsdp1_stream_probe.py")],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_gathered_units_come_from_the_unshard_stream(probe: dict) -> None:
    allocations = probe["allocations"]
    assert allocations.get("unsharded_flat_param@unshard", 0) > 0
    assert not [k for k in allocations if k.startswith("unsharded_flat_param@") and not k.endswith("@unshard")]


def test_sharded_gradients_come_from_the_post_backward_stream_and_stay(probe: dict) -> None:
    allocations = probe["allocations"]
    assert allocations.get("new_sharded_grad@post_backward", 0) > 0
    assert not [k for k in allocations if k.startswith("new_sharded_grad@") and not k.endswith("@post_backward")]
    # the gradients the optimizer reads are those blocks, in both steps
    assert all(step["grads_in"] == ["post_backward"] for step in probe["steps"])


def test_adamw_makes_its_state_at_the_first_step(probe: dict) -> None:
    first, second = probe["steps"]
    assert first["state_before"] == 0 and first["state_after"] > 0
    assert second["state_before"] == second["state_after"] == first["state_after"]
