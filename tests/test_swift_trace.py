"""ms-swift's own ``swift sft`` step traced (vramplan/trace/swift_sft.py, run in ms-swift's venv,
VRAMPLAN_SWIFT_PYTHON) against the estimate under swift's policy: Qwen2.5-0.5B LoRA at 512
tokens, and a rotating sample of the recorded grid's Qwen2.5-0.5B rows re-traced (two
configurations a day). The whole grid is recorded by benchmarks/trainer_trace_grid.py --trainer swift and checked
in tests/test_swift_grid.py."""

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
from vramplan.trace.swift_grid import GRID, read_rows

pytestmark = pytest.mark.e2e

SWIFT_PYTHON = os.environ.get("VRAMPLAN_SWIFT_PYTHON", "")
if not SWIFT_PYTHON and not os.environ.get("CI"):
    pytest.skip("VRAMPLAN_SWIFT_PYTHON (python with ms-swift 4.x) is not set", allow_module_level=True)

ROOT = Path(__file__).parents[1]
MAX_UNDER_PCT, MAX_OVER_PCT = 2.0, 3.0
RUN = """
import json, sys, warnings
warnings.filterwarnings("ignore")
from vramplan.setup import make_setup
from vramplan.trace.swift_grid import GRID, read_rows
from vramplan.trace.swift_sft import trace_sft
model, fields = json.loads(sys.stdin.read())
r = trace_sft(model, make_setup(**fields))
print(json.dumps({"peak_bytes": r.peak_bytes, "largest": [[a.op, a.shape, a.dtype] for a in r.largest]}))
"""


def swift_trace(model: str, fields: dict) -> dict:
    if not SWIFT_PYTHON:
        pytest.fail("CI runs these tests: .ci/run sets VRAMPLAN_SWIFT_PYTHON")
    proc = subprocess.run(
        [SWIFT_PYTHON, "-c", RUN],
        input=json.dumps([model, fields]),
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1"),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def error_pct(model: str, fields: dict, traced: int) -> float:
    setup = make_setup(**fields)
    est = traceable_bytes(estimate(load_model(model), setup, policy=framework("swift").policy(setup)))
    return 100 * (est - traced) / traced


def test_lora_step_matches_the_swift_estimate() -> None:
    """Qwen2.5-0.5B LoRA r8 all-linear at 512 tokens: swift's step ran, and it builds the logits at every
    position (logits_to_keep keeps them all when every token but the first is labelled): the fp32
    log-softmax over 512 x vocabulary is among its largest tensors; the estimate holds the bounds."""
    fields = dict(method="lora", precision="bf16", attention="sdpa", seq_len=512, lora_targets="all-linear")
    out = swift_trace("qwen2.5-0.5b", fields)
    vocab = load_model("qwen2.5-0.5b").vocab_size
    assert ["_log_softmax", [512, vocab], "float32"] in out["largest"], out["largest"]
    err = error_pct("qwen2.5-0.5b", fields, out["peak_bytes"])
    assert -MAX_UNDER_PCT <= err <= MAX_OVER_PCT, f"{err:+.2f}%"


_DAY = datetime.date.today().toordinal()
_SMALL = [(m, f) for m, f in GRID if m == "qwen2.5-0.5b"]
SAMPLE = [_SMALL[(_DAY * 7 + k * 23) % len(_SMALL)] for k in range(2)]


@pytest.mark.parametrize(
    ("model", "fields"),
    SAMPLE,
    ids=[
        f"{m}-{f['method']}-{f['precision']}-{f['seq_len']}-gc{int(f['grad_checkpointing'])}-mb{f['micro_batch']}"
        for m, f in SAMPLE
    ],
)
def test_a_rotating_sample_of_the_grid_is_traced_again(model: str, fields: dict) -> None:
    """Two of the grid's Qwen2.5-0.5B configurations a day, traced again with today's ms-swift venv: within
    the bounds of the estimate, and equal to the recorded peak where one is recorded."""
    traced = swift_trace(model, fields)["peak_bytes"]
    err = error_pct(model, fields, traced)
    assert -MAX_UNDER_PCT <= err <= MAX_OVER_PCT, f"{err:+.2f}%"
    recorded = [r["peak_bytes"] for r in read_rows() if r["model"] == model and r["setup"] == fields]
    assert not recorded or traced in recorded, (recorded, traced)
