"""TRL's own SFTTrainer step traced (vramplan/trace/trl_sft.py) against the estimate under
TRL's policy: a rotating sample of the grid re-traced (two configurations a day), and the
fused head checked to be what ran (no tokens x vocabulary tensor anywhere in the step).
The whole grid is recorded by benchmarks/trainer_trace_grid.py --trainer trl and checked in
tests/test_trl_policy.py."""

from __future__ import annotations

import datetime

import pytest

from tests.conftest import requires
from vramplan.frameworks import framework
from vramplan.memory import estimate
from vramplan.memory.phases import traceable_bytes
from vramplan.models import load_model
from vramplan.setup import make_setup
from vramplan.trace.trl_grid import GRID

pytestmark = [pytest.mark.trace, requires("trl", "peft", "bitsandbytes")]

MAX_UNDER_PCT, MAX_OVER_PCT = 2.0, 3.0
_DAY = datetime.date.today().toordinal()
SAMPLE = [GRID[(_DAY * 7 + k * 23) % len(GRID)] for k in range(2)]


@pytest.mark.parametrize(("model", "fields"), SAMPLE, ids=[f"{m}-{f['method']}-{f['seq_len']}" for m, f in SAMPLE])
def test_sft_step_matches_the_trl_estimate(model: str, fields: dict) -> None:
    from vramplan.trace.trl_sft import trace_sft

    setup = make_setup(**fields)
    traced = trace_sft(model, setup).peak_bytes
    est = traceable_bytes(estimate(load_model(model), setup, policy=framework("trl").policy(setup)))
    err = 100 * (est - traced) / traced
    assert -MAX_UNDER_PCT <= err <= MAX_OVER_PCT, f"estimate {est / 2**30:.3f} vs traced {traced / 2**30:.3f} GiB"


def test_no_logits_are_built() -> None:
    """Qwen2.5-0.5B LoRA at 512 tokens: no tensor of the step has the vocabulary as its last
    dimension but the embedding and lm_head weights (the full-logits loop makes three)."""
    from vramplan.trace.trl_sft import trace_sft

    setup = make_setup(method="lora", precision="bf16", attention="sdpa", seq_len=512, lora_targets="all-linear")
    r = trace_sft("qwen2.5-0.5b", setup)
    vocab = load_model("qwen2.5-0.5b").vocab_size
    big = [a for a in r.largest if vocab in a.shape and a.op != "(parameter)"]
    assert not big, big
    hf = estimate(load_model("qwen2.5-0.5b"), setup)  # the generic full-logits loop
    assert r.peak_bytes < traceable_bytes(hf)


def test_the_cli_traces_trls_own_step(capsys) -> None:
    """``vramplan trace --trainer trl`` runs trl_sft's trace (TRL is installed here) and says so."""
    import json

    from vramplan.cli import main

    assert main(["trace", "qwen2.5-0.5b", "--trainer", "trl", "--method", "lora", "--seq-len", "128", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["trainer"] == "trl" and "TRL SFTTrainer (trace/trl_sft.py)" in data["notes"]
    assert any(n.startswith("the plan under trl's policy") for n in data["notes"])
