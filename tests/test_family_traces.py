"""The dense text families added for issue 20 (arch/olmo2.py, arch/smollm3.py, ...): what each
reader takes from its config, and the estimate against fake-tensor traces of the family's
catalog model on LoRA with and without checkpointing and QLoRA or full training.

The traces are recorded by ``python benchmarks/trace_families.py`` into
tables/measured/traces.jsonl; the analytic tests hold every recorded row of these models
within the grid's bounds, and the trace tier re-traces a rotating one a day."""

from __future__ import annotations

import datetime

import pytest

from tests.conftest import requires
from tests.test_qwen3_vl import QWEN3_VL_GRID, QWEN3_VL_MODELS
from tests.test_vlm_families import VLM_GRID, VLM_MODELS
from vramplan.memory import estimate
from vramplan.memory.phases import traceable_bytes
from vramplan.models import load_model
from vramplan.setup import make_setup, recorded_setup
from vramplan.validate import compare_row, traced_rows

#: DeepSeek-V2/V3 (arch/deepseek.py), eager: a CPU trace's sdpa takes its fp32 math kernel for MLA's
#: value heads narrower than its query heads, which a GPU's memory-efficient kernel does not
#: (memory/activations.py ``mla_core_bytes``); LoRA on the attention, as plans default for experts
DEEPSEEK_MODELS = ("deepseek-v2-lite", "deepseek-v3")
_V2 = dict(lora_targets="q_proj,kv_a_proj_with_mqa,kv_b_proj,o_proj", attention="eager")
_V3 = dict(lora_targets="q_a_proj,q_b_proj,kv_a_proj_with_mqa,kv_b_proj,o_proj", attention="eager")
DEEPSEEK_GRID = [
    ("deepseek-v2-lite", dict(method="lora", **_V2)),
    ("deepseek-v2-lite", dict(method="lora", grad_checkpointing=False, seq_len=512, **_V2)),
    ("deepseek-v2-lite", dict(method="qlora", quant="bnb-nf4", **_V2)),
    ("deepseek-v2-lite", dict(method="full", precision="bf16", seq_len=1024, attention="eager")),
    # the attention's s x s probabilities and the experts' routed tokens outweigh nothing else here
    ("deepseek-v2-lite", dict(method="lora", grad_checkpointing=False, seq_len=2048, micro_batch=2, **_V2)),
    # DeepSeek-V3's query latent (q_a_proj, q_a_layernorm, q_b_proj) and three dense layers
    ("deepseek-v3", dict(method="lora", seq_len=512, **_V3)),
    ("deepseek-v3", dict(method="lora", grad_checkpointing=False, seq_len=2048, **_V3)),
]

#: GPT-OSS (arch/gpt_oss.py), eager as the family plans (transformers refuses sdpa for its sinks);
#: all-linear adapts the attention alone (PEFT leaves the bare expert parameters)
GPT_OSS_MODELS = ("gpt-oss-20b", "gpt-oss-120b")
GPT_OSS_GRID = [
    ("gpt-oss-20b", dict(method="lora", attention="eager")),
    ("gpt-oss-20b", dict(method="lora", grad_checkpointing=False, seq_len=1024, attention="eager")),
    ("gpt-oss-20b", dict(method="full", precision="bf16", seq_len=1024, attention="eager")),
    # the sinks' s x (s + 1) probabilities and the clamped SwiGLU's routed tokens
    ("gpt-oss-20b", dict(method="lora", grad_checkpointing=False, seq_len=2048, micro_batch=2, attention="eager")),
    # full training's saves (gathered expert inputs, down_proj inputs, fp32 normalized norms) at the peak
    (
        "gpt-oss-20b",
        dict(method="full", precision="bf16", grad_checkpointing=False, seq_len=4096, micro_batch=2, attention="eager"),
    ),
    ("gpt-oss-120b", dict(method="lora", attention="eager")),
]

#: Llama 4 (arch/llama4.py), text batches through the vision-language model (the tower is built and
#: counted, never run); LoRA on the attention, as plans default for experts
LLAMA4_MODELS = ("llama-4-scout-17b-16e", "llama-4-maverick-17b-128e")
_ATTN = dict(lora_targets="q_proj,k_proj,v_proj,o_proj")
LLAMA4_GRID = [
    ("llama-4-scout-17b-16e", dict(method="lora", **_ATTN)),
    # every expert runs every token (t·E rows), the weightless fp32 q/k norms of the RoPE layers
    ("llama-4-scout-17b-16e", dict(method="lora", grad_checkpointing=False, seq_len=1024, **_ATTN)),
    ("llama-4-scout-17b-16e", dict(method="full", precision="bf16", seq_len=1024)),
    # eager keeps one s x s probability tensor in bf16: Llama 4 does not cast the softmax to fp32
    ("llama-4-scout-17b-16e", dict(method="lora", grad_checkpointing=False, seq_len=1024, attention="eager", **_ATTN)),
    # at the chunk's length sdpa gets a mask on the 36 chunked layers (a bias and repeated k/v each)
    ("llama-4-scout-17b-16e", dict(method="lora", seq_len=8192, **_ATTN)),
    ("llama-4-scout-17b-16e", dict(method="lora", grad_checkpointing=False, seq_len=8192, **_ATTN)),
    # Maverick: dense and MoE layers interleaved, 128 experts, no q/k norm
    ("llama-4-maverick-17b-128e", dict(method="lora", seq_len=1024, **_ATTN)),
    ("llama-4-maverick-17b-128e", dict(method="lora", grad_checkpointing=False, seq_len=512, **_ATTN)),
]

#: underestimates crash a run: the tighter bound (tests/test_estimate_vs_traces.py's)
MAX_UNDER_PCT = 1.0
MAX_OVER_PCT = 3.0

#: each family's catalog model, traced on these setups
SETUPS = (
    dict(method="lora"),
    dict(method="lora", grad_checkpointing=False, seq_len=1024),
    dict(method="qlora", quant="bnb-nf4"),
)
DENSE_MODELS = ("olmo-2-13b", "smollm3-3b", "granite-3.3-8b", "gemma-3-1b", "glm-4-9b-0414")
FAMILY_MODELS = (*DENSE_MODELS, *DEEPSEEK_MODELS, *VLM_MODELS, *QWEN3_VL_MODELS, *GPT_OSS_MODELS, *LLAMA4_MODELS)
FAMILY_GRID = [(model, fields) for model in DENSE_MODELS for fields in SETUPS] + [
    # Gemma 3's sliding-window layers under eager attention (the window masks an s x s score
    # matrix each layer keeps whole), and full fine-tuning of the two small models
    ("gemma-3-1b", dict(method="lora", grad_checkpointing=False, seq_len=1024, attention="eager")),
    # and under sdpa past the window, where each sliding layer keeps its mask as a bias (A·b·s²)
    ("gemma-3-1b", dict(method="lora", grad_checkpointing=False, seq_len=4096)),
    ("gemma-3-1b", dict(method="lora", grad_checkpointing=False, seq_len=2048, micro_batch=2)),
    ("gemma-3-1b", dict(method="full", precision="bf16", seq_len=1024)),
    ("smollm3-3b", dict(method="full", precision="bf16", seq_len=1024)),
    *DEEPSEEK_GRID,
    *VLM_GRID,  # with images: tests/test_vlm_families.py
    *QWEN3_VL_GRID,  # Qwen3-VL and Qwen3-VL-MoE with images (tests/test_qwen3_vl.py)
    *GPT_OSS_GRID,
    *LLAMA4_GRID,
]


def _family_rows() -> list[dict]:
    return [r for r in traced_rows() if r["model"] in FAMILY_MODELS]


def test_every_family_configuration_is_recorded() -> None:
    recorded = {(r["model"], recorded_setup(r["setup"])) for r in _family_rows()}
    missing = [(m, f) for m, f in FAMILY_GRID if (m, make_setup(**f)) not in recorded]
    assert not missing, f"trace them: python benchmarks/trace_families.py ({missing})"


@pytest.mark.parametrize("row", _family_rows(), ids=lambda r: f"{r['model']}-{r['key']}")
def test_recorded_family_trace_within_bounds(row: dict) -> None:
    c = compare_row(row)
    assert -MAX_UNDER_PCT <= c.error_pct <= MAX_OVER_PCT, (
        f"estimate {c.estimate_bytes / 2**30:.3f} GiB vs traced {c.traced_bytes / 2**30:.3f} GiB"
    )


def test_olmo2_norms_the_whole_projections_after_the_blocks() -> None:
    spec = load_model("olmo-2-13b")
    assert spec.qk_norm and spec.qk_norm_over_projection and spec.qk_norm_shapes == (5120, 5120)
    assert spec.norm_scale_fp32 and spec.norms_per_layer == 2 and not spec.tie_word_embeddings
    assert spec.decoder_layer == "Olmo2DecoderLayer" and spec.model_type == "olmo2"


def test_smollm3_ties_embeddings_by_its_config_class_default() -> None:
    spec = load_model("smollm3-3b")
    assert spec.tie_word_embeddings and not spec.qk_norm and spec.decoder_layer == "SmolLM3DecoderLayer"


def test_granite_reads_as_llama_with_its_multipliers_saving_nothing() -> None:
    spec = load_model("granite-3.3-8b")
    assert spec.tie_word_embeddings and not spec.qk_norm and spec.norms_per_layer == 2
    assert not spec.norm_scale_fp32 and not any(lin.bias for lin in spec.attention + spec.mlp)
    assert ("llamafactory", "granite3") in spec.chat_templates


def test_gemma3_text_has_per_head_qk_norms_four_fp32_norms_and_sdpa() -> None:
    spec = load_model("gemma-3-1b")
    assert spec.qk_norm and not spec.qk_norm_over_projection and spec.qk_norm_shapes == (256, 256)
    assert spec.norms_per_layer == 4 and spec.norm_scale_fp32 and spec.tie_word_embeddings
    assert spec.attn_logit_softcapping is None and spec.final_logit_softcapping is None
    assert "sdpa" in spec.attentions and spec.hidden_act == "gelu_pytorch_tanh"


def test_gemma3_sliding_layers_keep_their_mask_as_a_bias_under_sdpa_only() -> None:
    from vramplan.arch import gemma3
    from vramplan.memory.activations import window_mask_bytes

    spec = load_model("gemma-3-1b")
    assert (spec.sliding_layers, spec.sliding_window) == (22, 512)  # 26 layers, every sixth global
    types = ["sliding_attention", "full_attention"] * 13
    assert gemma3.sliding_layers({"layer_types": types}, "config.json", 26) == 13
    long = make_setup(method="lora", grad_checkpointing=False, seq_len=4096, micro_batch=2)
    assert window_mask_bytes(spec, long) == 2 * 2 * 4096 * 4096 * 22 // 26
    for other in (dict(attention="eager"), dict(attention="flash-attn-2"), dict(seq_len=511)):
        assert window_mask_bytes(spec, long.model_copy(update=other)) == 0
    # at the window's own length the mask is built (kv_length >= window; traced on Mistral-7B-v0.1)
    assert window_mask_bytes(spec, long.model_copy(update={"seq_len": 512})) == 2 * 2 * 512 * 512 * 22 // 26
    assert window_mask_bytes(load_model("smollm3-3b"), long) == 0  # no window: nothing, as before


def test_glm4_fuses_only_the_mlp_and_biases_only_qkv() -> None:
    spec = load_model("glm-4-9b-0414")
    assert spec.fused_gate_up and not spec.fused_qkv and spec.norms_per_layer == 4
    assert [lin.name for lin in spec.mlp] == ["gate_up_proj", "down_proj"]
    assert {lin.name: lin.bias for lin in spec.attention} == {
        "q_proj": True,
        "k_proj": True,
        "v_proj": True,
        "o_proj": False,
    }


_DAY = datetime.date.today().toordinal()


@pytest.mark.trace
@requires("torch", "transformers", "peft")
@pytest.mark.parametrize(("model", "fields"), [FAMILY_GRID[_DAY % len(FAMILY_GRID)]])
def test_a_rotating_family_configuration_traced_again(model: str, fields: dict) -> None:
    """One configuration of FAMILY_GRID a day, traced anew against the estimate."""
    from vramplan.trace.run import trace

    setup = make_setup(**fields)
    traced = trace(model, setup, steps=2, keep_timeline=False).peak_bytes
    est = traceable_bytes(estimate(load_model(model), setup))
    err = 100 * (est - traced) / traced
    assert -MAX_UNDER_PCT <= err <= MAX_OVER_PCT, f"{model} {fields}: {err:+.2f}%"
