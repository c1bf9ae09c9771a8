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
