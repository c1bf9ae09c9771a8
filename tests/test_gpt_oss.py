"""GPT-OSS (arch/gpt_oss.py): what the reader takes from the config, the parameter counts of the
two released models, and the memory terms the family changes (attention sinks under eager, the
clamped SwiGLU, the top-k router, fp32 normalized norms). The traces are in
tests/test_family_traces.py (``GPT_OSS_GRID``); the meta-device counts in tests/test_params_oracle.py."""

from __future__ import annotations

import pytest

from vramplan import plan
from vramplan.arch import spec_from_config
from vramplan.errors import VramplanError
from vramplan.memory.activations import attention_core_bytes, mlp_bytes, sink_probs_bytes
from vramplan.memory.trainable import lora_params
from vramplan.models import load_config, load_model
from vramplan.params import param_counts
from vramplan.setup import make_setup


def test_the_released_models_count_what_transformers_builds() -> None:
    # transformers 5.25's meta-device GptOssForCausalLM (tests/test_params_oracle.py)
    small, big = param_counts(load_model("gpt-oss-20b")), param_counts(load_model("gpt-oss-120b"))
    assert small.total == 20_914_757_184 and big.total == 116_829_156_672
    # the model card's active counts (3.6B, 5.1B) leave the embedding table out
    assert round((small.active - small.embeddings) / 1e9, 1) == 3.6
    assert round((big.active - big.embeddings) / 1e9, 1) == 5.1


def test_reader_takes_sinks_biases_experts_and_the_window() -> None:
    spec = load_model("openai/gpt-oss-20b")
    assert spec.name == "gpt-oss-20b" and spec.attention_sinks and spec.sink_shapes == (64,)
    assert all(lin.bias for lin in spec.attention + spec.moe_mlp) and spec.mlp == ()
    assert spec.moe is not None and spec.moe.layers == tuple(range(24))
    assert (spec.moe.num_experts, spec.moe.experts_per_token, spec.moe.expert_intermediate_size) == (32, 4, 2880)
    assert spec.moe.clamped_swiglu and spec.moe.router_topk_softmax
    assert (spec.sliding_layers, spec.sliding_window) == (12, 128)
    assert spec.norm_scale_fp32 and not spec.tie_word_embeddings
    assert not any(lin.nn_linear or lin.param_target_rank for lin in spec.moe_mlp)  # PEFT leaves them alone
    assert spec.attentions == ("eager", "flash-attn-2") and ("llamafactory", "gpt_oss") in spec.chat_templates
    # q is 64 x 64 = 4096 wide, wider than hidden 2880
    assert [(lin.name, lin.in_features, lin.out_features) for lin in spec.attention][0] == ("q_proj", 2880, 4096)


def test_config_defaults_follow_gpt_oss_config() -> None:
    _, cfg = load_config("gpt-oss-20b")
    bare = {k: v for k, v in cfg.items() if k not in ("layer_types", "attention_bias", "sliding_window")}
    spec = spec_from_config(bare, "bare")
    # GptOssConfig: attention_bias True, sliding_window 128, layer i slides when i + 1 is odd
    assert all(lin.bias for lin in spec.attention) and (spec.sliding_layers, spec.sliding_window) == (12, 128)
    # num_experts is GptOssConfig's alias of num_local_experts
    alias = {k: v for k, v in bare.items() if k != "num_local_experts"} | {"num_experts": 8}
    assert spec_from_config(alias, "alias").moe.num_experts == 8  # type: ignore[union-attr]
    with pytest.raises(VramplanError, match="layer_types"):
        spec_from_config({**cfg, "layer_types": ["full_attention"]}, "bad")


def test_sinks_keep_one_probability_tensor_in_the_scores_dtype() -> None:
    spec = load_model("gpt-oss-20b")
    setup = make_setup(method="lora", attention="eager", seq_len=1024, grad_checkpointing=False)
    b, s, a = 1, 1024, 64
    assert sink_probs_bytes(spec, setup) == 2 * b * a * s * (s + 1) + 8 * b * a * s
    # without sinks the same layer would keep an fp32 softmax and its bf16 copy: three times as much
    plain = spec.model_copy(update={"attention_sinks": False})
    more = attention_core_bytes(plain, setup, False) - attention_core_bytes(spec, setup, False)
    assert more == 6 * b * a * s * s - sink_probs_bytes(spec, setup)
    # sdpa-style kernels keep no probabilities
    flash = setup.model_copy(update={"attention": "flash-attn-2"})
    assert attention_core_bytes(spec, flash, False) == attention_core_bytes(plain, flash, False)


def test_clamped_swiglu_and_topk_router_saves() -> None:
    spec = load_model("gpt-oss-20b")
    setup = make_setup(method="lora", attention="eager", seq_len=1024)
    assert spec.moe is not None
    t, k, i, h, e = 1024, 4, 2880, 2880, 32
    assert mlp_bytes(spec, setup, 0, False) == 2 * t * k * (6 * i + h) + (2 + 8) * t * k
    mixtral_like = spec.model_copy(
        update={"moe": spec.moe.model_copy(update={"clamped_swiglu": False, "router_topk_softmax": False})}
    )
    assert mlp_bytes(mixtral_like, setup, 0, False) == 2 * t * k * (3 * i + h) + 4 * t * e


def test_all_linear_adapts_the_attention_only() -> None:
    spec = load_model("gpt-oss-20b")
    setup = make_setup(method="lora")
    per_layer = sum(8 * (lin.in_features + lin.out_features) for lin in spec.attention)
    assert lora_params(spec, setup) == 24 * per_layer


def test_the_plan_runs_eager_and_leaves_all_linear_alone() -> None:
    p = plan("openai/gpt-oss-20b", gpu="h100")
    assert p.setup.attention == "eager" and p.setup.lora_targets == "all-linear"
    codes = {n.code for n in p.notes}
    assert "family.attention" in codes and "moe.lora_targets" not in codes
    # the MXFP4 experts, planned as transformers trains them: dequantized to bf16
    (mx,) = [n for n in p.notes if n.code == "model.checkpoint_dequantized"]
    assert mx.data == {"model_type": "gpt_oss", "checkpoint_quant": "mxfp4", "dtype": "bfloat16"}
    assert load_model("gpt-oss-20b").checkpoint_quant == "mxfp4"
    with pytest.raises(VramplanError, match="attention"):
        plan("gpt-oss-20b", gpu="h100", attention="sdpa")


def test_other_trainers_emit_all_linear_as_it_reaches_the_attention_alone() -> None:
    from vramplan.emit import emit

    for target in ("llamafactory", "swift", "axolotl"):  # the same adapters as PEFT's all-linear
        p = plan("gpt-oss-20b", gpu="h100", trainer=target)
        assert p.setup.lora_targets == "all-linear"
        files = emit(p, target).files
        assert files
        if target == "llamafactory":
            assert "template: gpt_oss" in files["train.yaml"]


def test_transformers_4_loops_over_the_experts_and_keeps_each_output() -> None:
    from vramplan.arch import for_transformers

    spec = load_model("gpt-oss-20b")
    t4 = for_transformers(spec, 4)
    assert spec.transformers == 5 and t4.transformers == 4 and for_transformers(t4, 5) == spec
    assert param_counts(t4) == param_counts(spec)  # fused in both: the same parameters
    setup = make_setup(method="lora", attention="eager", seq_len=1024)
    # index_add_'s source, each routed token's weighted expert output: A·t·k·h per MoE layer
    assert mlp_bytes(t4, setup, 0, False) - mlp_bytes(spec, setup, 0, False) == 2 * 1024 * 4 * 2880
