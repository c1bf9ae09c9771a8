"""ms-swift 4.x's policy (vramplan/frameworks/swift.py): QLoRA without PEFT's k-bit upcast, the rest the
generic loop's, and what that moves in a plan."""

from __future__ import annotations

import pytest

from vramplan import plan
from vramplan.frameworks import framework
from vramplan.policy import default_policy, step_fields
from vramplan.setup import make_setup

pytestmark = pytest.mark.analytic

QWEN7 = dict(lora_rank=8, lora_alpha=32, lora_targets="all-linear", seq_len=2048, micro_batch=1, precision="bf16")


def test_qlora_keeps_unquantized_modules_and_residual_in_bf16() -> None:
    p = framework("swift").policy(make_setup(method="qlora", quant="bnb-nf4", precision="bf16"))
    assert (p.kbit_upcast, p.kbit_modules, p.residual, p.pointwise, p.extra_trainable) == (
        False,
        "bf16",
        "bf16",
        "bf16",
        "bf16",
    )
    assert p.adapter == "fp32" and p.loss_chain == "full_logits" and p.reentrant_checkpointing


@pytest.mark.parametrize(
    "fields", [dict(method="lora"), dict(method="full"), dict(method="qlora", quant="gptq-int4")], ids=str
)
def test_other_methods_run_the_generic_loop(fields: dict) -> None:
    setup = make_setup(**fields)
    # ZeRO runs swift's default-zero2/3 configs (tables/deepspeed_configs.json); samples past the cap are dropped
    generic = default_policy(setup).model_copy(update={"deepspeed_configs": "swift", "over_cap": "drop"})
    assert step_fields(framework("swift").policy(setup)) == step_fields(generic)


def test_qwen7b_qlora_weights_drop_by_the_fp32_half_of_what_bnb_leaves_unquantized() -> None:
    hf = plan("qwen2.5-7b", gpu="a100-80g", method="qlora", quant="bnb-nf4", trainer="hf", **QWEN7)
    sw = plan("qwen2.5-7b", gpu="a100-80g", method="qlora", quant="bnb-nf4", trainer="swift", **QWEN7)
    # tables/models/qwen2.5-7b/config.json: untied embeddings and lm_head, two norms a layer and the final one,
    # q/k/v biases (4 KV heads of 128)
    vocab, hidden, layers, kv = 152064, 3584, 28, 4 * 128
    unquantized = 2 * vocab * hidden + (2 * layers + 1) * hidden + layers * (hidden + 2 * kv)
    assert hf.terms["weights/frozen"] - sw.terms["weights/frozen"] == unquantized * (4 - 2)
    assert sw.terms.get("weights/autocast_copies", 0) == 0 < hf.terms["weights/autocast_copies"]
    assert sw.peak.allocated_bytes < hf.peak.allocated_bytes


def test_qwen7b_lora_is_unchanged() -> None:
    hf = plan("qwen2.5-7b", gpu="a100-80g", method="lora", trainer="hf", **QWEN7)
    sw = plan("qwen2.5-7b", gpu="a100-80g", method="lora", trainer="swift", **QWEN7)
    assert hf.terms == sw.terms
