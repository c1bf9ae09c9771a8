"""TRL's policy (vramplan/frameworks/trl.py) and the fused-head loss chain it needs
(vramplan/memory/fused_head.py, phases.phase_terms)."""

from __future__ import annotations

import pytest

from vramplan.frameworks import framework
from vramplan.memory import estimate
from vramplan.memory.phases import sft_scored_tokens
from vramplan.models import load_model
from vramplan.policy import default_policy
from vramplan.setup import Setup

TRL = framework("trl")


def _setup(method: str, **kw) -> Setup:
    quant = "bnb-nf4" if method == "qlora" else "none"
    return Setup(method=method, quant=quant, precision="bf16", attention="sdpa", **kw)


@pytest.mark.parametrize("method", ["full", "freeze", "lora", "qlora"])
def test_sft_runs_the_fused_head_with_longest_padding_and_non_reentrant_checkpoints(method: str) -> None:
    p = TRL.policy(_setup(method))
    assert (p.loss_chain, p.padding, p.reentrant_checkpointing) == ("fused_head", "longest", False)
    assert p.adapter == ("bf16" if method == "qlora" else "fp32")  # SFTTrainer casts QLoRA's trainables to bf16
    assert p.kbit_upcast is (method == "qlora")  # the script's prepare_model_for_kbit_training


def test_zero3_keeps_lora_adapters_in_the_base_dtype_and_forces_reentrant_checkpoints() -> None:
    p = TRL.policy(_setup("lora", parallel="zero3", num_gpus=2))
    assert p.adapter == "bf16" and p.reentrant_checkpointing is True
    assert TRL.policy(_setup("full", parallel="zero3", num_gpus=2)).reentrant_checkpointing is False


def test_grpo_keeps_the_generic_policy() -> None:
    setup = _setup("lora", rl="grpo", completion_len=64, seq_len=128, micro_batch=8)
    assert TRL.policy(setup) == default_policy(setup)


def test_fused_head_terms_by_hand(tiny) -> None:
    """LoRA bf16, seq 512, batch 2 on the tiny spec (h=64, V=1000): N = 2 x 511 scored positions;
    forward keeps N·h·2 (bf16 residual) + 7·4·N statistics + a 1022 x 32768 bf16 tile; backward an
    fp32 hidden grad and its cast (6·N·h) and its own tile; no logits chain at all."""
    setup = _setup("lora", seq_len=512, micro_batch=2)
    est = estimate(tiny, setup, policy=TRL.policy(setup))
    n, h = 2 * 511, 64
    assert sft_scored_tokens(setup) == n
    tile = n * 32768 * 2
    hf = estimate(tiny, setup, policy=default_policy(setup))
    assert "loss/log_softmax" in hf.terms
    forward = n * h * 2 + 7 * 4 * n + tile
    backward = 6 * n * h + tile
    from vramplan.memory.phases import phase_terms
    from vramplan.memory.policy import with_policy

    terms = phase_terms(tiny, with_policy(setup, TRL.policy(setup)))
    assert terms["forward_end"]["loss/fused_head"] == forward
    assert terms["backward_start"]["loss/fused_head"] == forward - tile
    assert terms["backward_start"]["loss/fused_head_backward"] == backward
    assert not any(k.startswith("loss/") and "fused" not in k for t in terms.values() for k in t)
    assert "overhead/logits_segment" not in est.terms


@pytest.mark.parametrize("method", ["lora", "qlora", "full"])
def test_trl_plans_less_than_the_full_logits_loop_on_a_large_vocabulary(method: str) -> None:
    spec = load_model("qwen2.5-7b" if method != "full" else "qwen2.5-0.5b")
    setup = _setup(method, seq_len=2048, grad_checkpointing=True, lora_rank=8, lora_targets="all-linear")
    trl, hf = estimate(spec, setup, policy=TRL.policy(setup)), estimate(spec, setup, policy=default_policy(setup))
    logits = hf.terms.get("loss/log_softmax", 0) + hf.terms.get("loss/backward_temporaries", 0)
    assert logits > 2**30  # the chain TRL never builds: 152k vocabulary x 2048 tokens
    assert trl.allocated_bytes < hf.allocated_bytes


def test_the_recorded_trl_grid_holds_the_bounds() -> None:
    """tables/measured/trl_traces.jsonl (benchmarks/trainer_trace_grid.py --trainer trl): every traced SFTTrainer
    step within 3% over and 2% under the estimate under TRL's policy, the median within 1%."""
    import statistics

    from vramplan.trace.trl_grid import error_pct, read_rows

    rows = read_rows()
    assert len(rows) >= 40
    errors = {f"{r['model']} {r['setup']}": error_pct(r) for r in rows}
    bad = {k: round(v, 2) for k, v in errors.items() if not -2.0 <= v <= 3.0}
    assert not bad, bad
    assert statistics.median(abs(v) for v in errors.values()) <= 1.0
