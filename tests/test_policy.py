"""The trainer policy's default: today's generic loop, tensor class by tensor class."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from vramplan.policy import Policy, default_policy
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


def test_deepspeed_amp_is_16bit() -> None:
    """DeepSpeed's bf16 mode casts the module: an amp-bf16 run is the bf16 one."""
    zero = Setup(method="full", precision="amp-bf16", parallel="zero2", num_gpus=2)
    assert default_policy(zero) == default_policy(Setup(method="full", precision="bf16"))


def test_policy_is_frozen_and_hashable() -> None:
    p = default_policy(Setup())
    assert hash(p) == hash(p.model_copy())
    with pytest.raises(ValidationError):
        p.activations = "fp32"  # type: ignore[misc]
    assert p.model_copy(update={"activations": "fp32"}) != p
    assert isinstance(p, Policy)
