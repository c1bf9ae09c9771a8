"""The trainer policy's default: today's generic loop, tensor class by tensor class."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from vramplan.policy import Policy, default_policy, recast
from vramplan.setup import PRECISIONS, Setup


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("method", ["full", "freeze", "lora", "qlora"])
def test_default_policy_by_precision(precision: str, method: str) -> None:
    """vramplan/policy.py's table: fp32 all fp32; bf16/fp16 all 16-bit; amp-* fp32 weights,
    16-bit activations; adapters fp32 (PEFT cast_adapter_dtype); QLoRA's k-bit upcast."""
    quant = "bnb-nf4" if method == "qlora" else "none"
    p = default_policy(Setup(method=method, precision=precision, quant=quant, attention="sdpa"))
    half = "fp16" if precision.endswith("fp16") else "bf16"
    weights = "fp32" if precision in ("fp32", "amp-bf16", "amp-fp16") else half
    assert (p.weights, p.master, p.grads, p.states) == (weights,) * 4
    assert p.activations == ("fp32" if precision == "fp32" else half)
    assert p.adapter == "fp32"
    assert p.autocast is (precision != "fp32")
    assert p.kbit_upcast is (method == "qlora")
    upcast = method == "qlora"
    assert p.residual == ("fp32" if upcast or weights == "fp32" else half)
    assert p.pointwise == ("fp32" if upcast else p.activations)
    assert p.extra_trainable == ("fp32" if upcast else weights)
    assert (p.loss_chain, p.padding, p.reentrant_checkpointing) == ("full_logits", "fixed", True)


def test_gptq_keeps_its_dtypes() -> None:
    """PEFT prepare_model_for_kbit_training leaves GPTQ models' parameters as they are."""
    p = default_policy(Setup(method="qlora", quant="gptq-int4", precision="bf16"))
    assert not p.kbit_upcast
    assert p.kbit_modules == "bf16"
    assert p.residual == "bf16"


@pytest.mark.parametrize("method", ["full", "freeze", "lora", "qlora"])
@pytest.mark.parametrize("quant", ["bnb-nf4", "gptq-int4"])
def test_recast_moves_the_default_as_the_default(method: str, quant: str) -> None:
    """DeepSpeed's bf16 mode casts an amp-bf16 model: the default policy becomes the bf16 one;
    a field a trainer set itself (here the adapters' dtype) is kept."""
    amp = Setup(method=method, precision="amp-bf16", quant=quant if method == "qlora" else "none")
    half = amp.model_copy(update={"precision": "bf16"})
    assert recast(default_policy(amp), amp, "bf16") == default_policy(half)
    own = default_policy(amp).model_copy(update={"adapter": "bf16", "activations": "fp32"})
    moved = recast(own, amp, "bf16")
    assert (moved.adapter, moved.activations, moved.weights) == ("bf16", "fp32", "bf16")


def test_policy_is_frozen_and_hashable() -> None:
    p = default_policy(Setup())
    assert hash(p) == hash(p.model_copy())
    with pytest.raises(ValidationError):
        p.activations = "fp32"  # type: ignore[misc]
    assert p.model_copy(update={"activations": "fp32"}) != p
    assert isinstance(p, Policy)


def test_estimate_reads_the_policy(tiny) -> None:
    """estimate() without a policy is estimate() with the default one; fp32 activations
    (4 B an element instead of 2) raise the saved activations and the logits, and the cache
    does not answer one policy with the other's estimate."""
    from vramplan.memory import estimate

    setup = Setup(method="lora", precision="bf16", grad_checkpointing=False)
    base = estimate(tiny, setup)
    assert estimate(tiny, setup, policy=default_policy(setup)) == base
    wide = estimate(tiny, setup, policy=default_policy(setup).model_copy(update={"activations": "fp32"}))
    assert wide.device_bytes > base.device_bytes
    assert estimate(tiny, setup) == base


def test_policy_setup_refuses_a_stale_policy() -> None:
    """A term that copies the setup with another precision must make its policy again."""
    from vramplan.memory.policy import plain, policy_of, with_policy

    setup = Setup(precision="bf16")
    own = default_policy(setup).model_copy(update={"adapter": "bf16"})
    carried = with_policy(setup, own)
    assert policy_of(carried) == own and policy_of(setup) == default_policy(setup)
    assert carried.model_copy(update={"seq_len": 16}).policy == own
    with pytest.raises(AssertionError, match="precision"):
        carried.model_copy(update={"precision": "fp32"})
    assert plain(carried) == setup


def test_estimate_refuses_what_it_does_not_count(tiny) -> None:
    from vramplan.memory import estimate

    setup = Setup()
    with pytest.raises(ValueError, match="kept_positions"):
        estimate(tiny, setup, policy=default_policy(setup).model_copy(update={"loss_chain": "kept_positions"}))
    with pytest.raises(ValueError, match="packed"):
        estimate(tiny, setup, policy=default_policy(setup).model_copy(update={"padding": "packed"}))
