"""Qwen (v1)'s own loss chain (memory/loss.py, ``ModelSpec.loss_without_upcast``): the terms against
hand-computed bytes, the cached blocks against the allocator's rules, and the dtype rule run on CPU."""

from __future__ import annotations

import pytest

from vramplan.arch import qwen
from vramplan.memory import loss
from vramplan.memory.policy import policy_of, with_policy
from vramplan.models import load_model
from vramplan.setup import make_setup
from vramplan.trace.allocator import CachingAllocator

V = 32000
S = 2048  # positions: b·s logits, b·(s - 1) shifted rows


def tiny_qwen() -> object:
    cfg = {
        "hidden_size": 64,
        "num_attention_heads": 4,
        "intermediate_size": 256,
        "num_hidden_layers": 2,
        "vocab_size": V,
        "seq_length": 4096,
    }
    return qwen.read("tiny-qwen", cfg, "config.json")


def terms(spec: object, autocast: bool = True, **fields: object) -> tuple[int, int, int, int]:
    setup = make_setup(method="lora", seq_len=S, micro_batch=1, **fields)
    if not autocast:  # a trainer that runs no autocast around the forward
        setup = with_policy(setup, policy_of(setup).model_copy(update={"autocast": False}))
    return (
        loss.forward_chain_bytes(spec, setup),  # type: ignore[arg-type]
        loss.log_softmax_bytes(spec, setup),  # type: ignore[arg-type]
        loss.loss_backward_temp_bytes(spec, setup),  # type: ignore[arg-type]
        loss.logits_segment_bytes(spec, setup),  # type: ignore[arg-type]
    )


def test_the_family_declares_its_loss() -> None:
    assert tiny_qwen().loss_without_upcast  # type: ignore[attr-defined]
    assert load_model("qwen-vl-chat").loss_without_upcast
    assert not load_model("qwen1.5-7b").loss_without_upcast  # transformers' Qwen2 classes: ForCausalLMLoss


def test_bf16_under_autocast_hand_computed() -> None:
    """bf16 with autocast (a single process): logits 2·t·V and their shifted copy 2·t'·V, autocast's
    fp32 copy 4·t'·V while the fp32 log-softmax 4·t'·V is written; backward's two fp32 buffers; the
    two 16-bit blocks stay cached."""
    t, ts = S, S - 1
    fwd, lsm, temps, seg = terms(tiny_qwen(), precision="bf16")
    assert fwd == 2 * t * V + (2 + 4 + 4) * ts * V
    assert lsm == 4 * ts * V
    assert temps == 8 * ts * V
    assert seg == 2 * t * V + 2 * ts * V


def test_fp16_under_autocast_hand_computed() -> None:
    """fp16 with autocast: the fused half-to-float log-softmax (no fp32 copy of its input), whose
    backward result is fp16; the fp16 result takes the shifted copy's block, the logits' stays."""
    t, ts = S, S - 1
    fwd, lsm, temps, seg = terms(tiny_qwen(), precision="fp16")
    assert fwd == 2 * t * V + (2 + 4) * ts * V
    assert lsm == 4 * ts * V
    assert temps == (4 + 2) * ts * V
    assert seg == 2 * t * V


def test_bf16_without_autocast_is_a_16_bit_chain() -> None:
    """No autocast around the forward: log-softmax, its grad and its backward result all bf16, in
    the blocks the logits and their shifted copy left."""
    t, ts = S, S - 1
    fwd, lsm, temps, seg = terms(tiny_qwen(), autocast=False, precision="bf16")
    assert fwd == 2 * t * V + (2 + 2) * ts * V
    assert lsm == 2 * ts * V
    assert temps == 4 * ts * V
    assert seg == 0


def test_fp32_hand_computed() -> None:
    t, ts = S, S - 1
    fwd, lsm, temps, seg = terms(tiny_qwen(), precision="fp32")
    assert (fwd, lsm, temps, seg) == (4 * t * V + 8 * ts * V, 4 * ts * V, 8 * ts * V, 0)


def test_other_families_keep_the_transformers_chain() -> None:
    """``ForCausalLMLoss`` upcasts itself: fp32 whatever the layout, over every position."""
    spec = load_model("qwen2.5-0.5b")
    v, t = spec.vocab_size, S
    for autocast in (True, False):
        assert terms(spec, autocast, precision="bf16") == (2 * t * v + 8 * t * v, 4 * t * v, 8 * t * v, 2 * t * v)


def replay_chain(t: int, a16: int, autocast: bool, fp16: bool) -> tuple[int, int]:
    """Qwen's chain as modeling_qwen.py and autograd run it, two steps through the allocator's rules;
    (allocated, reserved) at the chain's peak, the start of backward."""
    ts = t - 1
    c = 4 if autocast else a16
    cast = autocast and not fp16
    a = CachingAllocator()
    peak = (0, 0)
    for k in (0, 100):
        a.malloc(k, a16 * t * V)  # lm_logits
        a.malloc(k + 1, a16 * ts * V)  # lm_logits[..., :-1, :].contiguous()
        if cast:
            a.malloc(k + 2, 4 * ts * V)  # autocast's fp32 copy, the log-softmax's input
        a.malloc(k + 3, c * ts * V)  # the log-softmax, saved
        if cast:
            a.free(k + 2)
        a.free(k + 1)  # forward returns
        if autocast:
            a.malloc(k + 4, 4 * t * V)  # accelerate convert_outputs_to_fp32
            a.free(k + 4)
        a.free(k)  # the trainer keeps only the loss
        a.malloc(k + 5, c * ts * V)  # nll_loss_backward
        a.malloc(k + 6, (2 if fp16 else c) * ts * V)  # log_softmax_backward
        peak = (a.allocated, a.reserved)
        for key in (k + 3, k + 5, k + 6):
            a.free(key)
        a.malloc(k + 7, a16 * t * V)  # the logits' gradient
        a.free(k + 7)
    return peak


@pytest.mark.parametrize(("precision", "autocast"), [("bf16", True), ("fp16", True), ("bf16", False)])
def test_terms_match_the_allocator_replay(precision: str, autocast: bool) -> None:
    """Allocated at the start of backward is the log-softmax and its two buffers; reserved beyond it
    is ``logits_segment_bytes`` (within the allocator's grain: a block left unsplit keeps up to 1 MiB
    beyond its request, a segment is rounded to 2 MiB)."""
    _, lsm, temps, seg = terms(tiny_qwen(), autocast, precision=precision)
    allocated, reserved = replay_chain(S, 2, autocast, fp16=precision == "fp16")
    assert allocated == pytest.approx(lsm + temps, abs=3 << 20)
    assert reserved - allocated == pytest.approx(seg, abs=5 * (2 << 20))


@pytest.mark.trace
def test_cross_entropy_on_16_bit_logits_saves_fp32_under_autocast_only() -> None:
    """``CrossEntropyLoss`` on bf16 logits, as modeling_qwen.py calls it: under autocast the saved
    log-softmax is fp32 (CPU autocast here; CUDA's list names ``log_softmax`` the same way, ATen
    autocast_mode.h ``AT_FORALL_FP32_SET_OPT_DTYPE``), without it bf16."""
    import torch

    logits = torch.randn(1, 9, 64, dtype=torch.bfloat16, requires_grad=True)
    labels = torch.randint(0, 64, (1, 9))

    def saved_dtypes(autocast: bool) -> set[torch.dtype]:
        seen: list[torch.Tensor] = []

        def pack(x: torch.Tensor) -> torch.Tensor:
            seen.append(x)
            return x

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                shift = logits[..., :-1, :].contiguous()
                torch.nn.CrossEntropyLoss()(shift.view(-1, 64), labels[..., 1:].contiguous().view(-1))
        return {x.dtype for x in seen if x.dim() == 2}

    assert saved_dtypes(True) == {torch.float32}
    assert saved_dtypes(False) == {torch.bfloat16}
