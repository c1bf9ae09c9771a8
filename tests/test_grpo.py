"""GRPO plans (TRL GRPOTrainer on one GPU): the phases, the terms that set them, bad input,
and the answers to SCENARIOS.md case 2 (Visual-RFT on one RTX 4090)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from vramplan import plan
from vramplan.memory import estimate
from vramplan.memory.rl import fused_head_backward_bytes, fused_head_forward_bytes
from vramplan.models import load_model
from vramplan.params import param_counts
from vramplan.setup import make_setup
from vramplan.units import GIB

SPEC = "qwen2.5-1.5b"


def _grpo(**kw):
    base = dict(method="lora", rl="grpo", seq_len=1024, completion_len=512, micro_batch=8, grad_checkpointing=True)
    return make_setup(**{**base, **kw})


def test_phases_are_named_and_the_reference_runs_only_with_beta() -> None:
    spec = load_model(SPEC)
    est = estimate(spec, _grpo())
    assert {"generate", "forward_end", "backward_start", "backward", "optimizer_step"} <= set(est.phases)
    assert "reference" not in est.phases
    with_kl = estimate(spec, _grpo(beta=0.04))
    assert "reference" in with_kl.phases
    # LoRA's reference is its own base with the adapter off: no second copy of the weights
    assert "weights/reference" not in with_kl.terms


def test_full_policy_with_kl_keeps_a_frozen_copy_in_its_load_dtype() -> None:
    """TRL loads the reference in the policy's dtype: fp32 under AMP, 16-bit otherwise."""
    spec = load_model(SPEC)
    n = param_counts(spec).total
    amp = estimate(spec, _grpo(method="full", beta=0.04, precision="amp-bf16"))
    assert amp.terms["weights/reference"] == 4 * n
    half = estimate(spec, _grpo(method="full", beta=0.04, precision="bf16"))
    assert half.terms["weights/reference"] == 2 * n


def test_generation_dtype_follows_the_policy() -> None:
    """Generation runs outside autocast for PEFT models: fp32 keys/values after the k-bit
    upcast (QLoRA), and AMP's fp32 keys; AMP also keeps autocast's 16-bit weight copies."""
    from vramplan.memory.rl import generation_terms

    spec = load_model(SPEC)
    lora = generation_terms(spec, _grpo(), {}, 0)
    qlora = generation_terms(spec, _grpo(method="qlora", quant="bnb-nf4"), {}, 0)
    amp = generation_terms(spec, _grpo(method="full", precision="amp-bf16"), {}, 0)
    assert qlora["rl/kv_cache"] == 2 * lora["rl/kv_cache"]
    assert amp["rl/kv_cache"] == 1.5 * lora["rl/kv_cache"]
    assert amp["rl/autocast_copies"] == 2 * param_counts(spec).total and lora["rl/autocast_copies"] == 0


def test_generation_holds_the_whole_batch_kv_cache() -> None:
    spec = load_model(SPEC)
    s = _grpo(micro_batch=2, grad_accum=4)  # 8 completions generated at once
    kv = 2 * spec.num_layers * spec.num_kv_heads * spec.head_dim * 8 * 1024 * 2  # K and V, bf16
    from vramplan.memory.rl import generation_terms

    terms = generation_terms(spec, s, {}, 0)
    assert terms["rl/kv_cache"] == kv
    assert estimate(spec, s).phases["generate"] >= kv


def test_fused_head_replaces_the_logits_chain() -> None:
    spec = load_model(SPEC)
    s = _grpo()
    est = estimate(spec, s)
    sft = estimate(spec, make_setup(method="lora", seq_len=1024, micro_batch=8, grad_checkpointing=True))
    assert not any(k in est.terms for k in ("loss/log_softmax", "loss/backward_temporaries"))
    # 8 x 1024 tokens x 151,936 vocab of fp32 logits are never made: far below the SFT chain
    assert fused_head_forward_bytes(spec, s) + fused_head_backward_bytes(spec, s) < 0.1 * (
        sft.phases["backward_start"] - sft.terms.get("weights/frozen", 0)
    )


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "vramplan", *args], capture_output=True, text=True, env=env, timeout=120
    )


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["--rl", "grpo", "--micro-batch", "3"], "num_generations"),
        (["--rl", "grpo", "--seq-len", "256", "--completion-len", "512"], "completion_len"),
        (["--rl", "grpo", "--gpus", "2", "--parallel", "ddp"], "rl"),
        (["--rl", "grpo", "--method", "inference"], "rl"),
        (["--rl", "grpo", "--beta", "-1"], "beta"),
        (["--rl", "ppo"], "--rl"),
        (["--rl", "grpo", "--samples", "10", "--avg-tokens", "10"], "samples"),
        (["--num-generations", "4"], "num_generations"),
        (["--beta", "0.1"], "beta"),
    ],
)
@pytest.mark.e2e
def test_bad_grpo_input_exits_2(args: list[str], field: str) -> None:
    r = _cli("qwen2.5-1.5b", *args)
    assert r.returncode == 2 and field in r.stderr and "Traceback" not in r.stderr


def test_accumulation_rises_to_keep_whole_groups() -> None:
    """With the accumulation free, a smaller micro-batch comes with more accumulation so a
    step still generates num_generations completions per prompt."""
    p = plan(
        "qwen2-vl-7b",
        "4090",
        method="qlora",
        quant="bnb-int8",
        rl="grpo",
        image_size="448x448",
        seq_len=1024,
        completion_len=512,
    )
    s = p.setup
    assert p.fits and (s.micro_batch * s.grad_accum) % s.num_generations == 0 and s.micro_batch < 8


@pytest.mark.parametrize(
    ("model", "quant", "fits"),
    [
        ("qwen2-vl-2b", "bnb-int8", True),
        ("qwen2-vl-2b", "bnb-nf4", True),
        ("qwen2-vl-7b", "bnb-int8", True),
        ("qwen2-vl-7b", "bnb-nf4", True),
    ],
)
def test_case2_visual_rft_on_a_4090(model: str, quant: str, fits: bool) -> None:
    """Visual-RFT (GRPO on Qwen2-VL) on one RTX 4090, LoRA on 8-bit or 4-bit weights, one
    448x448 image, 512-token prompts and completions, 8 generations: each fits at some
    micro-batch, with the generation phase named beside the training phases."""
    p = plan(
        model, "4090", method="qlora", quant=quant, rl="grpo", image_size="448x448", seq_len=1024, completion_len=512
    )
    assert p.fits is fits
    assert p.peak.device_bytes <= 24 * GIB
    assert any(n.text.startswith("GRPO phases") for n in p.notes)


def test_pinned_micro_batch_raises_the_accumulation() -> None:
    p = plan(SPEC, "4090", method="lora", rl="grpo", micro_batch=2, seq_len=1024, completion_len=512)
    assert (p.setup.micro_batch, p.setup.grad_accum) == (2, 4)


@pytest.mark.e2e
def test_grpo_report_and_trace(tmp_path) -> None:
    page = tmp_path / "g.html"
    r = _cli(SPEC, "--rl", "grpo", "--report", str(page))
    assert r.returncode in (0, 1) and page.exists() and "GRPO" in page.read_text()
    t = _cli("trace", SPEC, "--rl", "grpo")
    assert t.returncode == 2 and "rl" in t.stderr and "Traceback" not in t.stderr


# --- vLLM colocated ------------------------------------------------------------------


#: the card vLLM takes its share of
CARD_BYTES = 24 * GIB


def _vllm(**kw):
    return _grpo(vllm="colocate", **kw)


def test_vllm_share_is_held_through_the_step_unless_it_sleeps() -> None:
    """The engine's share (fraction x card) sits beside every phase; with sleep mode only
    beside generation. HF generate's cache is not spent, and TRL's importance-sampling pass
    recomputes the completions' log-probs (phase old_logprobs)."""
    spec = load_model(SPEC)
    hf = estimate(spec, _grpo())
    held = estimate(spec, _vllm(), card_bytes=CARD_BYTES)
    share = int(0.3 * 24 * GIB)
    assert "old_logprobs" in held.phases and "old_logprobs" not in hf.phases
    assert "rl/kv_cache" not in {k for k in held.terms}
    for name in ("forward_end", "backward", "optimizer_step"):
        assert held.phases[name] == hf.phases[name] + share
    sleep = estimate(spec, _vllm(vllm_sleep=True), card_bytes=CARD_BYTES)
    assert sleep.phases["backward"] == hf.phases["backward"]
    assert sleep.phases["generate"] == held.phases["generate"]
    # generation is the policy's resident state plus the share, nothing of HF generate
    assert held.phases["generate"] - share < hf.phases["generate"]


def test_vllm_that_cannot_hold_its_weights_does_not_fit() -> None:
    """Qwen2.5-7B's 16-bit weights (14.2 GiB) do not fit 40% of a 4090: vLLM could not start."""
    p = plan(
        "qwen2.5-7b",
        "4090",
        method="lora",
        rl="grpo",
        seq_len=1024,
        completion_len=512,
        vllm="colocate",
        vllm_gpu_memory_utilization=0.4,
    )
    assert not p.fits
    assert any("vLLM cannot start" in n.text for n in p.notes)
    small = plan("qwen2.5-1.5b", "4090", method="lora", rl="grpo", seq_len=1024, completion_len=512, vllm="colocate")
    assert small.fits and any("room for" in n.text and "sequences at once" in n.text for n in small.notes)


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["--vllm", "colocate"], "vllm"),  # no --rl grpo
        (["--rl", "grpo", "--method", "qlora", "--quant", "bnb-int8", "--vllm", "colocate"], "vllm"),
        (["--rl", "grpo", "--vllm-sleep"], "vllm"),  # sleep without vLLM
        (["--rl", "grpo", "--vllm", "colocate", "--vllm-memory", "1.5"], "vllm_gpu_memory_utilization"),
    ],
)
@pytest.mark.e2e
def test_bad_vllm_input_exits_2(args: list[str], field: str) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "vramplan", SPEC, "--gpu", "4090", *args], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.startswith(f"vramplan: error: {field}") and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_no_allocator_slack_on_the_vllm_share() -> None:
    """vLLM sizes its share itself: the caching allocator's slack is charged on the rest only."""
    from vramplan.memory.overhead import allocator_slack_bytes

    est = estimate(load_model(SPEC), _vllm(), card_bytes=CARD_BYTES)
    share = est.terms["rl/vllm_share"]
    assert est.terms["overhead/allocator_slack"] == allocator_slack_bytes(est.allocated_bytes - share)
