"""axolotl's policy (vramplan/frameworks/axolotl.py): QLoRA and LLM.int8 LoRA with the norms,
embeddings and lm_head cast back to the 16-bit dtype after PEFT's k-bit preparation, fp32 LoRA
adapters, reentrant checkpointing except under ``unfrozen_parameters``, fixed-length batches."""

from __future__ import annotations

import pytest

from vramplan import plan
from vramplan.frameworks import framework
from vramplan.policy import default_policy
from vramplan.setup import Setup

pytestmark = pytest.mark.analytic

AX = framework("axolotl")


@pytest.mark.parametrize("quant", ["bnb-nf4", "bnb-nf4-dq", "bnb-fp4", "bnb-int8"])
def test_qlora_modules_are_converted_back_to_16_bit(quant: str) -> None:
    p = AX.policy(Setup(method="qlora", quant=quant, precision="bf16"))
    assert (p.kbit_upcast, p.kbit_modules, p.extra_trainable, p.residual, p.pointwise) == (False,) + ("bf16",) * 4
    assert (p.adapter, p.reentrant_checkpointing, p.padding) == ("fp32", True, "fixed")


def test_fp32_qlora_stays_the_generic_loop() -> None:
    s = Setup(method="qlora", quant="bnb-nf4", precision="fp32")
    assert AX.policy(s) == default_policy(s)


def test_freeze_checkpoints_without_reentrancy() -> None:
    s = Setup(method="freeze", precision="bf16", grad_checkpointing=True)
    assert AX.policy(s) == default_policy(s).model_copy(update={"reentrant_checkpointing": False})
    s = Setup(method="lora", precision="bf16")
    assert AX.policy(s) == default_policy(s)


def test_lora_7b_estimates_as_the_generic_loop_and_qlora_below_it() -> None:
    """The emitted config keeps PEFT's LoRA path (kernels off): LoRA is the generic loop's."""
    kw = dict(lora_rank=8, seq_len=2048, micro_batch=1, grad_checkpointing=True)
    hf = plan("qwen2.5-7b", gpu="a100-80g", trainer="hf", method="lora", **kw)
    ax = plan("qwen2.5-7b", gpu="a100-80g", trainer="axolotl", method="lora", **kw)
    assert ax.terms == hf.terms
    hf = plan("qwen2.5-7b", gpu="a100-80g", trainer="hf", method="qlora", quant="bnb-nf4", **kw)
    ax = plan("qwen2.5-7b", gpu="a100-80g", trainer="axolotl", method="qlora", quant="bnb-nf4", **kw)
    assert ax.terms["weights/frozen"] < hf.terms["weights/frozen"]
    assert ax.peak.allocated_bytes < hf.peak.allocated_bytes
