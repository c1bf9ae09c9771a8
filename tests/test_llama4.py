"""Llama 4 (arch/llama4.py): the reader (interleaved MoE and dense layers, a shared expert, the
router as an nn.Linear, chunked and NoPE layers, the weightless q/k norm, the vision tower
counted), the parameter counts of Scout and Maverick, and the memory terms the family changes
(every expert runs every token). Traces: tests/test_family_traces.py ``LLAMA4_GRID``; meta-device
counts: tests/test_params_oracle.py."""

from __future__ import annotations

import pytest

from vramplan import plan
from vramplan.arch import spec_from_config
from vramplan.arch.config import legacy_bools
from vramplan.errors import VramplanError
from vramplan.memory.activations import mlp_bytes, rope_qk_l2_norm_bytes
from vramplan.memory.trainable import full_trainable_params
from vramplan.models import load_config, load_model
from vramplan.params import param_counts
from vramplan.setup import make_setup

SCOUT, MAVERICK = "llama-4-scout-17b-16e", "llama-4-maverick-17b-128e"


def test_counts_equal_transformers_meta_device_model() -> None:
    scout, maverick = param_counts(load_model(SCOUT)), param_counts(load_model(MAVERICK))
    assert scout.total == 108_641_793_536 and maverick.total == 401_583_781_376
    # the tower (34 layers of 1408, the pixel-shuffle adapter) and the projector 4096 -> 5120
    assert (scout.vision, scout.projector) == (850_960_896, 20_971_520) == (maverick.vision, maverick.projector)
    # Meta's "17B active": the active parameters less the embedding table
    assert round((scout.active - scout.embeddings) / 1e9) == 17 == round((maverick.active - maverick.embeddings) / 1e9)


def test_scout_every_layer_moe_maverick_every_other() -> None:
    scout, maverick = load_model("meta-llama/Llama-4-Scout-17B-16E-Instruct"), load_model(MAVERICK)
    assert scout.moe is not None and maverick.moe is not None
    assert scout.moe.layers == tuple(range(48)) and maverick.moe.layers == tuple(range(1, 48, 2))
    assert (scout.moe.num_experts, maverick.moe.num_experts, scout.moe.experts_per_token) == (16, 128, 1)
    assert scout.moe.dense_dispatch and scout.moe.shared_expert_intermediate_size == 8192
    assert scout.intermediate_size == 16384 and [lin.out_features for lin in scout.mlp] == [16384, 16384, 5120]
    names = {lin.name: lin.nn_linear for lin in scout.moe_mlp}
    assert names == {
        "router": False,  # an nn.Linear subclass that bitsandbytes leaves 16-bit and no LoRA should target
        "experts.gate_up_proj": False,
        "experts.down_proj": False,
        "shared_expert.gate_proj": True,
        "shared_expert.up_proj": True,
        "shared_expert.down_proj": True,
    }
    # 36 RoPE layers chunk their attention by 8192 tokens and L2-normalize q and k (Scout only)
    assert (scout.sliding_layers, scout.sliding_window, scout.rope_qk_l2_norm_layers) == (36, 8192, 36)
    assert (maverick.sliding_layers, maverick.rope_qk_l2_norm_layers) == (36, 0)
    assert scout.attentions == ("eager", "sdpa") and scout.vision is None and scout.tower_params
    assert ("llamafactory", "llama4") in scout.chat_templates


def test_text_config_alone_reads_as_llama4_text() -> None:
    _, cfg = load_config(SCOUT)
    text = spec_from_config(cfg["text_config"], "text")
    vlm = load_model(SCOUT)
    assert text.model_type == "llama4_text" and text.tower_params == 0
    assert param_counts(text).total == param_counts(vlm).total - 850_960_896 - 20_971_520
    # Llama4TextConfig.__post_init__'s defaults: MoE layers from interleave_moe_layer_step, NoPE every 4
    bare = {k: v for k, v in cfg["text_config"].items() if k not in ("moe_layers", "no_rope_layers")}
    assert spec_from_config(bare, "bare").moe == text.moe
    assert spec_from_config(bare, "bare").sliding_layers == 36
    with pytest.raises(VramplanError, match="no_rope_layers"):
        spec_from_config({**bare, "no_rope_layers": [1, 2]}, "bad")


@pytest.mark.trace  # transformers' own config classes are imported to tell a bool field
def test_legacy_int_for_a_bool_is_read_as_true() -> None:
    pytest.importorskip("transformers")
    _, cfg = load_config(SCOUT)
    fixed, keys = legacy_bools("llama4", {k: v for k, v in cfg.items() if k != "model_type"})
    assert cfg["text_config"]["attn_temperature_tuning"] == 4
    assert fixed["text_config"]["attn_temperature_tuning"] is True and keys == ["text_config.attn_temperature_tuning"]


def test_every_expert_runs_every_token() -> None:
    spec = load_model(SCOUT)
    setup = make_setup(method="lora", lora_targets="q_proj,k_proj,v_proj,o_proj", seq_len=1024)
    t, e, i, h = 1024, 16, 8192, 5120
    # per expert copy of every token: gate_up (2I), its activation (I), the scaled input (h);
    # the shared expert (3I per token) and the fp32 sigmoid scores (t x E)
    assert mlp_bytes(spec, setup, 0, False) == 2 * t * e * (3 * i + h) + 2 * 3 * t * i + 4 * t * e
    q, kv = 40 * 128, 8 * 128
    assert rope_qk_l2_norm_bytes(spec, setup) == (4 * t * (q + kv) + 4 * t * 48) * 36 // 48


def test_eager_keeps_one_bf16_probability_tensor() -> None:
    from vramplan.memory.activations import attention_core_bytes

    spec = load_model(SCOUT)
    eager = make_setup(method="lora", attention="eager", seq_len=1024, grad_checkpointing=False)
    fp32 = spec.model_copy(update={"eager_softmax_in_scores_dtype": False})
    s, a = 1024, 40
    assert attention_core_bytes(fp32, eager, False) - attention_core_bytes(spec, eager, False) == 4 * a * s * s


def test_full_training_leaves_the_tower_without_state() -> None:
    spec = load_model(SCOUT)
    counts = param_counts(spec)
    full = make_setup(method="full", precision="bf16")
    assert full_trainable_params(spec, full) == counts.total - counts.vision - counts.projector


def test_plans_lora_on_the_attention_and_refuses_all_linear() -> None:
    p = plan("meta-llama/Llama-4-Scout-17B-16E-Instruct", gpu="h100", num_gpus=8)
    assert p.setup.lora_targets == "q_proj,k_proj,v_proj,o_proj" and p.setup.attention == "sdpa"
    codes = {n.code for n in p.notes}
    assert {"moe.lora_targets", "model.tower_text_only"} <= codes
    with pytest.raises(VramplanError, match="lora_targets: all-linear"):
        plan(SCOUT, gpu="h100", num_gpus=8, lora_targets="all-linear")
    with pytest.raises(VramplanError, match="attention"):
        plan(SCOUT, gpu="h100", attention="flash-attn-2")
