"""axolotl 0.19.0's own SFT step traced (vramplan/trace/axolotl_sft.py, run in axolotl's venv
named by VRAMPLAN_AXOLOTL_PYTHON) against the estimate under axolotl's policy.

Outside CI the tests skip without the venv; in CI they fail."""

from __future__ import annotations

import datetime
import json
import os
import subprocess
from pathlib import Path

import pytest

from vramplan.frameworks import framework
from vramplan.memory import estimate
from vramplan.memory.phases import traceable_bytes
from vramplan.models import load_model
from vramplan.setup import make_setup
from vramplan.trace.axolotl_grid import GRID

pytestmark = pytest.mark.e2e

PYTHON = os.environ.get("VRAMPLAN_AXOLOTL_PYTHON", "")
if not PYTHON and not os.environ.get("CI"):
    pytest.skip("VRAMPLAN_AXOLOTL_PYTHON (python with axolotl 0.19.0) is not set", allow_module_level=True)

ROOT = Path(__file__).resolve().parents[1]
MAX_UNDER_PCT, MAX_OVER_PCT = 2.0, 3.0
_SMALL = [(m, f) for m, f in GRID if m == "qwen2.5-0.5b"]
_DAY = datetime.date.today().toordinal()
#: the CI re-trace: two of the 0.5B configurations, another two each day
SAMPLE = [_SMALL[(_DAY * 7 + k * 11) % len(_SMALL)] for k in range(2)]
LORA_512 = dict(
    method="lora",
    lora_rank=8,
    lora_alpha=16,
    lora_targets="all-linear",
    precision="bf16",
    attention="sdpa",
    seq_len=512,
    grad_checkpointing=True,
    micro_batch=1,
)


def trace(model: str, fields: dict) -> dict:
    """The TraceResult (as JSON) of axolotl's step, traced in its venv."""
    if not PYTHON:
        pytest.fail("CI runs these tests: .ci/run sets VRAMPLAN_AXOLOTL_PYTHON")
    proc = subprocess.run(
        [PYTHON, "-m", "vramplan.trace.axolotl_sft", model, json.dumps(fields)],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "AXOLOTL_DO_NOT_TRACK": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines, proc.stdout[-2000:] + proc.stderr[-2000:]
    return json.loads(lines[-1])


def error_pct(model: str, fields: dict, traced: int) -> float:
    setup = make_setup(**fields)
    est = traceable_bytes(estimate(load_model(model), setup, policy=framework("axolotl").policy(setup)))
    return 100 * (est - traced) / traced


def test_lora_step_is_axolotls_and_matches_its_estimate() -> None:
    """Qwen2.5-0.5B LoRA r8 at 512 tokens: the step ran in axolotl's own trainer with its reentrant
    checkpointing, and the traced peak is within the bounds of the estimate under its policy."""
    r = trace("qwen2.5-0.5b", LORA_512)
    notes = " ".join(r["notes"])
    assert "AxolotlTrainer" in notes and "'use_reentrant': True" in notes, notes
    assert r["peak_phase"] == "backward"
    err = error_pct("qwen2.5-0.5b", LORA_512, r["peak_bytes"])
    assert -MAX_UNDER_PCT <= err <= MAX_OVER_PCT, f"{err:+.2f}% of {r['peak_bytes'] / 2**30:.3f} GiB"


@pytest.mark.parametrize(
    ("model", "fields"),
    SAMPLE,
    ids=[f"{f['method']}-{f['seq_len']}-gc{int(f['grad_checkpointing'])}-mb{f['micro_batch']}" for _, f in SAMPLE],
)
def test_a_recorded_configuration_traces_within_bounds(model: str, fields: dict) -> None:
    """A rotating sample of the recorded grid traced again (tests/test_axolotl_grid.py holds the
    recorded rows)."""
    r = trace(model, fields)
    err = error_pct(model, fields, r["peak_bytes"])
    assert -MAX_UNDER_PCT <= err <= MAX_OVER_PCT, f"{err:+.2f}% of {r['peak_bytes'] / 2**30:.3f} GiB"
