"""DeepSeek-V2/V3 (arch/deepseek.py): multi-head latent attention, leading dense layers, shared
beside routed experts. Counts by hand against the reader, and the catalog models against the
checkpoint's own total (tests/test_params_oracle.py holds them against transformers' model)."""

from __future__ import annotations

import pytest

from vramplan.arch import spec_from_config
from vramplan.errors import VramplanError
from vramplan.models import load_model
from vramplan.params import param_counts

TINY = dict(
    model_type="deepseek_v3",
    hidden_size=64,
    intermediate_size=160,
    moe_intermediate_size=32,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=4,
    vocab_size=100,
    q_lora_rank=48,
    kv_lora_rank=24,
    qk_nope_head_dim=16,
    qk_rope_head_dim=8,
    v_head_dim=12,
    n_routed_experts=8,
    n_shared_experts=2,
    num_experts_per_tok=2,
    first_k_dense_replace=1,
)


def test_tiny_v3_counts_by_hand() -> None:
    spec = spec_from_config(dict(TINY))
    h, a, L = 64, 4, 4
    attn = (
        h * 48  # q_a_proj
        + 48 * a * (16 + 8)  # q_b_proj
        + h * (24 + 8)  # kv_a_proj_with_mqa
        + 24 * a * (16 + 12)  # kv_b_proj
        + a * 12 * h  # o_proj
        + 48
        + 24  # q_a_layernorm, kv_a_layernorm
    )
    dense = 3 * h * 160
    moe = 8 * h + 8 * 3 * h * 32 + 3 * h * 64  # router, 8 experts, shared experts 2 x 32 wide
    counts = param_counts(spec)
    assert counts.attention == L * attn
    assert counts.mlp == dense + 3 * moe
    assert counts.norms == (2 * L + 1) * h
    assert counts.total == 2 * 100 * h + L * attn + dense + 3 * moe + (2 * L + 1) * h
    assert spec.moe is not None and spec.moe.layers == (1, 2, 3)
    assert spec.moe.shared_expert_intermediate_size == 64
    assert spec.head_dim == 24 and spec.q_dim == 96
    assert counts.idle_experts == 3 * 8 * 3 * h * 32 * (8 - 2) // 8


def test_v2_without_query_latent_has_one_q_proj() -> None:
    spec = spec_from_config({**TINY, "model_type": "deepseek_v2", "q_lora_rank": None})
    names = [lin.name for lin in spec.attention]
    assert names == ["q_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj"]
    assert spec.latent_norm_shapes == (24,)
    assert spec.attention[0].out_features == 4 * 24


def test_all_dense_layers_make_no_moe() -> None:
    spec = spec_from_config({**TINY, "first_k_dense_replace": 4})
    assert spec.moe is None and spec.moe_mlp == ()


def test_grouped_key_value_heads_are_refused() -> None:
    with pytest.raises(VramplanError) as err:
        spec_from_config({**TINY, "num_key_value_heads": 2})
    assert err.value.field == "num_key_value_heads"


def test_catalog_counts_match_the_published_checkpoint() -> None:
    # DeepSeek-V2-Lite-Chat's 5,291 checkpoint tensors hold 15,706,484,224 parameters
    # (tables/models/deepseek-v2-lite/source.json)
    assert param_counts(load_model("deepseek-v2-lite")).total == 15_706_484_224
    # DeepSeek-V3: 671B without the multi-token-prediction layer transformers does not build
    assert 670e9 < param_counts(load_model("deepseek-v3")).total < 672e9


def test_mla_attention_saves_by_hand() -> None:
    from vramplan.memory.activations import attention_core_bytes, latent_norm_bytes
    from vramplan.setup import make_setup

    spec = spec_from_config(dict(TINY))
    b, s, a, A = 2, 256, 4, 2
    t = b * s
    qk, kvb, o = a * 24, a * 28, a * 12
    sdpa = make_setup(method="lora", micro_batch=b, seq_len=s)
    assert attention_core_bytes(spec, sdpa, False) == A * t * (2 * qk + kvb + o) + 4 * b * a * s
    eager = sdpa.model_copy(update={"attention": "eager"})
    probs = 4 * b * a * s * s + A * b * a * s * s
    assert attention_core_bytes(spec, eager, False) == A * t * (2 * qk + o) + probs
    assert attention_core_bytes(spec, eager, True) == A * t * (2 * qk + 2 * o) + probs
    # q_a_layernorm (48) and kv_a_layernorm (24): the fp32 input and rsqrt of each
    assert latent_norm_bytes(spec, sdpa, False) == (4 * t * 48 + 4 * t) + (4 * t * 24 + 4 * t)


def test_shared_experts_save_a_dense_gated_mlp_on_every_token() -> None:
    from vramplan.memory.activations import mlp_bytes
    from vramplan.setup import make_setup

    spec = spec_from_config(dict(TINY))
    none = spec_from_config({**TINY, "n_shared_experts": 0})
    setup = make_setup(method="lora", seq_len=256)
    assert mlp_bytes(spec, setup, 1, False) - mlp_bytes(none, setup, 1, False) == 3 * 2 * 256 * 64
    assert mlp_bytes(spec, setup, 1, True) - mlp_bytes(none, setup, 1, True) == 4 * 2 * 256 * 64


def test_the_cache_holds_the_compressed_latent() -> None:
    spec = spec_from_config(dict(TINY))
    assert spec.kv_cache_widths == (24, 8)  # kv_lora_rank, qk_rope_head_dim
    dense = load_model("qwen2.5-0.5b")
    assert dense.kv_cache_widths == (dense.kv_dim, dense.kv_dim)


def test_the_router_stays_fp32_under_lora() -> None:
    from vramplan.memory.weights import frozen_weight_bytes, kept_fp32_params
    from vramplan.setup import make_setup

    spec = load_model("deepseek-v2-lite")
    assert kept_fp32_params(spec) == 26 * 64 * 2048  # 26 MoE layers' router weights
    lora = make_setup(method="lora")
    assert frozen_weight_bytes(spec, lora) == 2 * param_counts(spec).total + 2 * 26 * 64 * 2048
    assert kept_fp32_params(load_model("qwen3-30b-a3b")) == 0


def test_transformers_4_builds_per_expert_linears_beside_a_bare_router() -> None:
    from vramplan.arch import for_transformers
    from vramplan.memory.weights import frozen_weight_bytes, kept_fp32_params
    from vramplan.setup import make_setup

    t5 = spec_from_config(dict(TINY))
    t4 = for_transformers(t5, 4)
    assert t5.transformers == 5 and t4.transformers == 4
    assert param_counts(t4).total == param_counts(t5).total
    names = {lin.name: lin for lin in t4.moe_mlp}
    assert not names["gate"].nn_linear and not names["gate"].param_target_rank and not names["gate"].keep_fp32
    assert all(names[f"experts.{n}"].routed and names[f"experts.{n}"].count == 8 for n in ("gate_proj", "up_proj"))
    assert "shared_experts.down_proj" in names and kept_fp32_params(t4) == 0
    assert for_transformers(t4, 5) == t5
    # QLoRA: transformers 4 quantizes the experts, transformers 5 keeps them 16-bit (fp32 after the upcast)
    qlora = make_setup(method="qlora", quant="bnb-nf4", lora_targets="q_a_proj")
    v3 = load_model("deepseek-v3")
    assert frozen_weight_bytes(for_transformers(v3, 4), qlora) < frozen_weight_bytes(v3, qlora) / 4
    dense = spec_from_config({**TINY, "first_k_dense_replace": 4})
    assert dense.transformers == 0 and for_transformers(dense, 4) == dense


def test_generation_expands_the_cached_latent_each_step() -> None:
    from vramplan.memory.inference import cache_growth_bytes, kv_cache_tensor_bytes, mla_expansion_bytes
    from vramplan.setup import make_setup

    spec = spec_from_config(dict(TINY))
    gen = make_setup(method="inference", seq_len=256)
    assert kv_cache_tensor_bytes(spec, gen) == 2 * 4 * (24 + 8) * 256  # 4 layers, latent + rotary key
    assert mla_expansion_bytes(spec, gen) == 2 * 4 * (2 * 16 + 12 + 8) * 256
    assert cache_growth_bytes(spec, gen) == 2 * 24 * 256 + mla_expansion_bytes(spec, gen)
    assert mla_expansion_bytes(load_model("qwen2.5-0.5b"), gen) == 0
