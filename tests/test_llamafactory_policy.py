"""LLaMA-Factory's policy (vramplan/frameworks/llamafactory.py): QLoRA without PEFT's k-bit
upcast (embeddings, lm_head and norms in the compute dtype, 16-bit residual stream), fp32
trainable parameters, reentrant checkpointing, padding bounded by the cap."""

from __future__ import annotations

import pytest

from vramplan import plan
from vramplan.frameworks import framework
from vramplan.models import load_model
from vramplan.policy import default_policy, step_fields
from vramplan.setup import Setup

pytestmark = pytest.mark.analytic

LF = framework("llamafactory")


@pytest.mark.parametrize("quant", ["bnb-nf4", "bnb-nf4-dq", "bnb-fp4", "bnb-int8"])
def test_qlora_keeps_embeddings_norms_and_residual_16_bit(quant: str) -> None:
    p = LF.policy(Setup(method="qlora", quant=quant, precision="bf16"))
    assert (p.kbit_upcast, p.kbit_modules, p.residual, p.pointwise) == (False, "bf16", "bf16", "bf16")
    assert (p.adapter, p.extra_trainable, p.reentrant_checkpointing, p.padding) == ("fp32", "fp32", True, "fixed")
    assert p.extra_weights == "fp32"


def test_lora_trains_extra_modules_in_fp32_and_otherwise_runs_the_generic_loop() -> None:
    s = Setup(method="lora", precision="bf16")
    lf_ds = {"deepspeed_configs": "llamafactory"}  # ZeRO runs its examples/deepspeed configs
    generic = default_policy(s).model_copy(update={"extra_trainable": "fp32", "extra_weights": "fp32", **lf_ds})
    assert step_fields(LF.policy(s)) == step_fields(generic)
    for s in (Setup(method="full", precision="amp-bf16"), Setup(method="freeze", precision="bf16")):
        assert step_fields(LF.policy(s)) == step_fields(default_policy(s).model_copy(update=lf_ds))


def test_qlora_7b_weights_drop_by_the_16_bit_embeddings_and_lm_head() -> None:
    """Qwen2.5-7B QLoRA nf4 at 2048 tokens: fp32 -> bf16 embeddings, lm_head and norms halve
    their bytes, and lm_head needs no autocast copy."""
    spec = load_model("qwen2.5-7b")
    kw = dict(method="qlora", quant="bnb-nf4", lora_rank=8, seq_len=2048, micro_batch=1, grad_checkpointing=True)
    hf = plan("qwen2.5-7b", gpu="a100-80g", trainer="hf", **kw)
    lf = plan("qwen2.5-7b", gpu="a100-80g", trainer="llamafactory", **kw)
    head = 2 * spec.vocab_size * spec.hidden_size  # embeddings + lm_head (untied)
    drop = hf.terms["weights/frozen"] - lf.terms["weights/frozen"]
    assert head * 2 <= drop < head * 2 * 1.01  # fp32 -> bf16, plus the norms
    assert hf.terms["weights/autocast_copies"] > 0 and lf.terms.get("weights/autocast_copies", 0) == 0
    assert lf.peak.allocated_bytes < hf.peak.allocated_bytes


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_modules_to_save_copies_are_fp32(method: str) -> None:
    """``cast_trainable_params_to_fp32`` casts the embeddings' ``modules_to_save`` copy too: 4 B
    per element of it where the generic loop counts the module's own dtype (bf16, or fp32 after
    PEFT's k-bit upcast)."""
    from vramplan.memory import estimate

    spec = load_model("qwen2.5-0.5b")
    quant = "bnb-nf4" if method == "qlora" else "none"
    base = Setup(method=method, quant=quant, precision="bf16", lora_rank=8, lora_alpha=16, seq_len=512)
    extra = base.model_copy(update={"trainable_extra": ("embeddings",)})
    copy = spec.vocab_size * spec.hidden_size

    def trainable(s: Setup, trainer: str) -> int:
        policy = framework(trainer).policy(s)
        return estimate(spec, s, policy=policy).terms["weights/trainable"]

    assert trainable(extra, "llamafactory") - trainable(base, "llamafactory") == 4 * copy
    assert trainable(extra, "hf") - trainable(base, "hf") == (2 if method == "lora" else 4) * copy
