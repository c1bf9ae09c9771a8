"""DeepSeek-V2 and DeepSeek-V3 (transformers 5.25 ``models/deepseek_v2/modeling_deepseek_v2.py``
and ``models/deepseek_v3/modeling_deepseek_v3.py``, model types ``deepseek_v2`` and ``deepseek_v3``;
built without remote code).

Attention is multi-head latent attention (``DeepseekV3Attention``): with ``q_lora_rank`` set, q
comes from ``q_b_proj(q_a_layernorm(q_a_proj(x)))`` (``q_a_proj`` h -> q_lora_rank, with a bias
when ``attention_bias``; ``q_b_proj`` q_lora_rank -> heads x (qk_nope + qk_rope), no bias), else
from one ``q_proj`` (h -> heads x (qk_nope + qk_rope), no bias). ``kv_a_proj_with_mqa`` (h ->
kv_lora_rank + qk_rope, bias when ``attention_bias``) gives the latent and the rotary key shared
by all heads; ``kv_a_layernorm(kv_lora_rank)`` normalizes the latent and ``kv_b_proj``
(kv_lora_rank -> heads x (qk_nope + v_head_dim), no bias) expands it into the keys' nope part and
the values; ``o_proj`` maps heads x v_head_dim back to h (bias when ``attention_bias``).

Layers from ``first_k_dense_replace`` on are mixtures of experts (``DeepseekV3MoE``,
``DeepseekV2Moe``: ``layer_idx >= config.first_k_dense_replace``; ``moe_layer_freq`` is not
read): a router weight (``DeepseekV3TopkRouter.weight``, an fp32 ``nn.Parameter`` of
n_routed_experts x h, no ``nn.Linear``), the routed experts as fused parameters
(``DeepseekV3Experts.gate_up_proj`` E x 2·moe_intermediate x h and ``down_proj`` E x h x
moe_intermediate) and shared experts as one gated MLP of ``nn.Linear`` layers
(``shared_experts = DeepseekV3MLP(intermediate_size=moe_intermediate_size * n_shared_experts)``)
that every token goes through. The first layers are a dense ``DeepseekV3MLP`` of
``intermediate_size``. Two RMSNorms per layer (Llama's), untied embeddings by default
(``tie_word_embeddings = False`` in both config classes). transformers counts DeepSeek-V3's
multi-token-prediction layer out of the model (``_keys_to_ignore_on_load_unexpected =
[r"model\\.layers\\.61.*"]``): ``num_hidden_layers`` layers are built.
"""

from __future__ import annotations

from typing import Any

from vramplan.arch.config import common, flag, integer
from vramplan.arch.registry import Family, register
from vramplan.errors import VramplanError
from vramplan.limits import MAX_EXPERTS, MAX_HEAD_DIM, MAX_HIDDEN, MAX_INTERMEDIATE
from vramplan.spec import Linear, MLASpec, ModelSpec, MoESpec


def _mla(cfg: dict[str, Any], where: str) -> MLASpec:
    return MLASpec(
        # null in DeepSeek-V2-Lite: a plain q_proj (DeepseekV2Config.q_lora_rank: int | None)
        q_lora_rank=integer(cfg, "q_lora_rank", where, 1, MAX_HIDDEN) if cfg.get("q_lora_rank") is not None else 0,
        kv_lora_rank=integer(cfg, "kv_lora_rank", where, 1, MAX_HIDDEN, default=512),
        qk_nope_head_dim=integer(cfg, "qk_nope_head_dim", where, 1, MAX_HEAD_DIM, default=128),
        qk_rope_head_dim=integer(cfg, "qk_rope_head_dim", where, 1, MAX_HEAD_DIM, default=64),
        v_head_dim=integer(cfg, "v_head_dim", where, 1, MAX_HEAD_DIM, default=128),
    )


def mla_linears(h: int, heads: int, mla: MLASpec, bias: bool) -> tuple[Linear, ...]:
    """``DeepseekV3Attention.__init__``'s projections, in its order."""
    qk = mla.qk_nope_head_dim + mla.qk_rope_head_dim
    if mla.q_lora_rank:
        q: tuple[Linear, ...] = (
            Linear(name="q_a_proj", in_features=h, out_features=mla.q_lora_rank, bias=bias),
            Linear(name="q_b_proj", in_features=mla.q_lora_rank, out_features=heads * qk),
        )
    else:
        q = (Linear(name="q_proj", in_features=h, out_features=heads * qk),)
    return (
        *q,
        Linear(
            name="kv_a_proj_with_mqa", in_features=h, out_features=mla.kv_lora_rank + mla.qk_rope_head_dim, bias=bias
        ),
        Linear(
            name="kv_b_proj",
            in_features=mla.kv_lora_rank,
            out_features=heads * (mla.qk_nope_head_dim + mla.v_head_dim),
        ),
        Linear(name="o_proj", in_features=heads * mla.v_head_dim, out_features=h, bias=bias),
    )


def _experts(cfg: dict[str, Any], where: str, h: int, layers: int) -> tuple[MoESpec, tuple[Linear, ...]]:
    # DeepseekV3Config maps num_local_experts, DeepseekV2Config num_experts, to n_routed_experts
    n_exp = integer(cfg, "n_routed_experts", where, 1, MAX_EXPERTS)
    inter = integer(cfg, "moe_intermediate_size", where, 1, MAX_INTERMEDIATE)
    n_shared = integer(cfg, "n_shared_experts", where, 0, MAX_EXPERTS, default=0)
    first_dense = integer(cfg, "first_k_dense_replace", where, 0, layers, default=0)
    shared = inter * n_shared
    moe = MoESpec(
        num_experts=n_exp,
        experts_per_token=integer(cfg, "num_experts_per_tok", where, 1, n_exp),
        expert_intermediate_size=inter,
        shared_expert_intermediate_size=shared,
        layers=tuple(range(first_dense, layers)),
    )
    mlp_bias = flag(cfg, "mlp_bias", where, False) if cfg["model_type"] == "deepseek_v2" else False
    linears = _fused(h, n_exp, inter)
    if shared:
        linears += (
            Linear(name="shared_experts.gate_proj", in_features=h, out_features=shared, bias=mlp_bias),
            Linear(name="shared_experts.up_proj", in_features=h, out_features=shared, bias=mlp_bias),
            Linear(name="shared_experts.down_proj", in_features=shared, out_features=h, bias=mlp_bias),
        )
    return moe, linears


def _fused(h: int, n_exp: int, inter: int) -> tuple[Linear, ...]:
    """transformers 5: the router's bare fp32 weight and the two fused expert stacks."""
    return (
        # fp32 whatever the load dtype (DeepseekV3PreTrainedModel._keep_in_fp32_modules_strict)
        Linear(name="gate", in_features=h, out_features=n_exp, nn_linear=False, param_target_rank=1, keep_fp32=True),
        # PEFT's rank_pattern doubles the rank of the fused gate_up stack: it stands for two projections
        Linear(
            name="experts.gate_up_proj",
            in_features=h,
            out_features=2 * inter,
            count=n_exp,
            nn_linear=False,
            param_target_rank=2,
        ),
        Linear(
            name="experts.down_proj",
            in_features=inter,
            out_features=h,
            count=n_exp,
            nn_linear=False,
            param_target_rank=1,
        ),
    )


def restack(spec: ModelSpec, major: int) -> ModelSpec:
    """``spec`` (transformers 5's fused experts, as :func:`read` gives it) as transformers ``major``
    builds it. 4 (read at 4.57.6, ``DeepseekV3MoE`` / ``DeepseekV2Moe``): the experts an
    ``nn.ModuleList`` of MLPs of ``nn.Linear`` ``gate_proj``/``up_proj``/``down_proj``, which
    bitsandbytes quantizes and PEFT's ``all-linear`` adapts one by one; the router still a bare
    ``nn.Parameter`` (``DeepseekV3TopkRouter.weight``, ``DeepseekV2MoEGate.weight``) that neither
    touches, loaded in the model's dtype (no ``_keep_in_fp32_modules`` there). The shared experts
    are the same ``nn.Linear`` MLP in both."""
    if spec.moe is None:  # every layer dense: the same in both
        return spec
    h, n_exp, inter = spec.hidden_size, spec.moe.num_experts, spec.moe.expert_intermediate_size
    shared = tuple(lin for lin in spec.moe_mlp if lin.name.startswith("shared_experts."))
    if major == 5:
        return spec.model_copy(update={"moe_mlp": _fused(h, n_exp, inter) + shared, "transformers": 5})
    experts = tuple(
        Linear(name=f"experts.{n}", in_features=i, out_features=o, count=n_exp, routed=True)
        for n, i, o in (("gate_proj", h, inter), ("up_proj", h, inter), ("down_proj", inter, h))
    )
    router = Linear(name="gate", in_features=h, out_features=n_exp, nn_linear=False)
    return spec.model_copy(update={"moe_mlp": (router, *experts, *shared), "transformers": 4})


def read(name: str, cfg: dict[str, Any], where: str) -> ModelSpec:
    c = common(cfg, where)
    mla = _mla(cfg, where)
    if c["num_heads"] != c["num_kv_heads"]:
        raise VramplanError(
            "num_key_value_heads",
            f"multi-head latent attention expands k and v for every head: must equal num_attention_heads"
            f" ({c['num_heads']}), got {c['num_kv_heads']} ({where})",
        )
    # each query and key head is qk_nope + qk_rope wide (transformers sets config.head_dim to
    # qk_rope_head_dim, the rotary part: what RoPE's cos and sin are wide)
    c["head_dim"] = mla.qk_nope_head_dim + mla.qk_rope_head_dim
    bias = flag(cfg, "attention_bias", where, False)
    mlp_bias = flag(cfg, "mlp_bias", where, False) if cfg["model_type"] == "deepseek_v2" else False
    inter = c["intermediate_size"]
    h = c["hidden_size"]
    mlp = (
        Linear(name="gate_proj", in_features=h, out_features=inter, bias=mlp_bias),
        Linear(name="up_proj", in_features=h, out_features=inter, bias=mlp_bias),
        Linear(name="down_proj", in_features=inter, out_features=h, bias=mlp_bias),
    )
    moe, moe_mlp = _experts(cfg, where, h, c["num_layers"])
    v3 = cfg["model_type"] == "deepseek_v3"
    return ModelSpec(
        name=name,
        model_type=cfg["model_type"],
        gated_mlp=True,
        attention=mla_linears(h, c["num_heads"], mla, bias),
        mlp=mlp,
        moe=moe if moe.layers else None,
        moe_mlp=moe_mlp if moe.layers else (),
        mla=mla,
        decoder_layer="DeepseekV3DecoderLayer" if v3 else "DeepseekV2DecoderLayer",
        transformers_module=cfg["model_type"],
        chat_templates=(("llamafactory", "deepseek3" if v3 else "deepseek"),),
        transformers=5 if moe.layers else 0,
        **c,
    )


FAMILY = register(Family("deepseek", ("deepseek_v2", "deepseek_v3"), read, title="DeepSeek-V2/V3", restack=restack))
