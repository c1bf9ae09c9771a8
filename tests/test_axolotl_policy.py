"""axolotl's policy (vramplan/frameworks/axolotl.py): QLoRA and LLM.int8 LoRA with the norms,
embeddings and lm_head cast back to the 16-bit dtype after PEFT's k-bit preparation, fp32 LoRA
adapters, reentrant checkpointing except under ``unfrozen_parameters``, fixed-length batches."""

from __future__ import annotations

import re

import pytest

from vramplan import plan
from vramplan.frameworks import framework
from vramplan.policy import default_policy, step_fields
from vramplan.setup import Setup

pytestmark = pytest.mark.analytic

AX = framework("axolotl")


#: ZeRO runs axolotl's deepspeed_configs (tables/deepspeed_configs.json); samples past the cap are dropped
AX_DS = {"deepspeed_configs": "axolotl", "over_cap": "drop"}


@pytest.mark.parametrize("quant", ["bnb-nf4", "bnb-nf4-dq", "bnb-fp4", "bnb-int8"])
def test_qlora_modules_are_converted_back_to_16_bit(quant: str) -> None:
    p = AX.policy(Setup(method="qlora", quant=quant, precision="bf16"))
    assert (p.kbit_upcast, p.kbit_modules, p.extra_trainable, p.residual, p.pointwise) == (False,) + ("bf16",) * 4
    assert (p.adapter, p.reentrant_checkpointing, p.padding) == ("fp32", True, "fixed")


def test_fp32_qlora_stays_the_generic_loop() -> None:
    s = Setup(method="qlora", quant="bnb-nf4", precision="fp32")
    assert step_fields(AX.policy(s)) == step_fields(default_policy(s).model_copy(update=AX_DS))


def test_freeze_checkpoints_without_reentrancy() -> None:
    s = Setup(method="freeze", precision="bf16", attention="flash-attn-2", grad_checkpointing=True)
    generic = default_policy(s).model_copy(update={"reentrant_checkpointing": False, **AX_DS})
    assert step_fields(AX.policy(s)) == step_fields(generic)
    s = Setup(method="lora", precision="bf16")
    assert step_fields(AX.policy(s)) == step_fields(default_policy(s).model_copy(update=AX_DS))


@pytest.mark.parametrize("method", ["full", "freeze"])
@pytest.mark.parametrize("attention", ["sdpa", "eager", "flash-attn-2"])
def test_no_adapter_keeps_embeddings_head_and_norms_in_fp32(method: str, attention: str) -> None:
    """``_configure_embedding_dtypes`` upcasts them without an adapter and casts them back only
    for an attention that needs 16-bit inputs (``attn_needs_dtype_cast``: flash attention)."""
    p = AX.policy(Setup(method=method, precision="bf16", attention=attention))
    upcast = attention != "flash-attn-2"
    assert (p.upcast_modules, p.residual) == (("fp32", "fp32") if upcast else (None, "bf16"))
    assert p.master == "bf16" and p.pointwise == "bf16"
    assert AX.policy(Setup(method=method, precision="fp32", attention="sdpa")).upcast_modules is None


def test_full_7b_trains_its_embeddings_in_fp32() -> None:
    """Qwen2.5-7B full at 2048 under axolotl: the untied embedding and lm_head (2 x 152k x 3584)
    in fp32 add 2 B each to the weights and grads, 4 B to the AdamW moments."""
    kw = dict(method="full", precision="bf16", attention="sdpa", seq_len=2048, micro_batch=1, grad_checkpointing=True)
    hf = plan("qwen2.5-7b", gpu="h100", trainer="hf", **kw)
    ax = plan("qwen2.5-7b", gpu="h100", trainer="axolotl", **kw)
    n = 2 * 152064 * 3584
    assert ax.terms["weights/trainable"] - hf.terms["weights/trainable"] == pytest.approx(2 * n, rel=0.01)
    assert ax.terms["optimizer/adamw"] - hf.terms["optimizer/adamw"] == pytest.approx(4 * n, rel=0.01)


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


def test_vlm_adapters_name_the_language_models_linears() -> None:
    """On Qwen2-VL, axolotl's ``lora_target_linear`` would wrap the vision tower too and name the
    merger's ``Sequential`` indices, which PEFT refuses: the config's options name the language
    model's linears instead (what the plan counts). ``emit`` refuses VLMs for axolotl; the traced
    VLM rows (vramplan/trace/axolotl_sft.py) load these options."""
    from vramplan.frameworks.files.axolotl import options
    from vramplan.frameworks.files.common import Context
    from vramplan.models import load_model

    setup = Setup(method="lora", lora_rank=8, lora_alpha=16, lora_targets="all-linear", precision="bf16")
    spec = load_model("qwen2-vl-2b")
    ctx = Context.model_construct(
        model_name="qwen2-vl-2b", model_path="x", spec=spec, setup=setup, data="d.jsonl", reasons={}
    )
    got = {k: v for k, v, _ in options(ctx)}
    assert "lora_target_linear" not in got
    regex = got["lora_target_modules"]
    assert re.fullmatch(regex, "model.language_model.layers.0.self_attn.q_proj")
    assert not re.fullmatch(regex, "model.visual.blocks.0.attn.qkv")
    assert not re.fullmatch(regex, "model.visual.blocks.0")
