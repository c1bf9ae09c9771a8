"""Mixture-of-experts families: Mixtral and Qwen3-MoE (transformers ``models/mixtral``,
``models/qwen3_moe``). transformers 5 holds the experts as fused ``nn.Parameter`` tensors
(``MixtralExperts`` / ``Qwen3MoeExperts``: ``gate_up_proj`` and ``down_proj``) beside a router
weight (``MixtralTopKRouter`` / ``Qwen3MoeTopKRouter``): none is an ``nn.Linear``."""

from __future__ import annotations

from typing import Any

from vramplan.arch.config import indexes, integer
from vramplan.arch.decoder import llama_like
from vramplan.arch.registry import Family, register
from vramplan.limits import MAX_EXPERTS, MAX_INTERMEDIATE, MAX_LAYERS
from vramplan.spec import Linear, ModelSpec, MoESpec


def _experts(cfg: dict[str, Any], where: str, c: dict[str, Any]) -> tuple[MoESpec, tuple[Linear, ...]]:
    if cfg["model_type"] == "mixtral":  # every layer sparse; experts as wide as intermediate_size
        n_exp = integer(cfg, "num_local_experts", where, 1, MAX_EXPERTS)
        e_inter = c["intermediate_size"]
        layers = tuple(range(c["num_layers"]))
    else:
        # transformers 5 saves Qwen3-MoE's expert count as num_local_experts (its attribute map)
        key = "num_experts" if "num_experts" in cfg or "num_local_experts" not in cfg else "num_local_experts"
        n_exp = integer(cfg, key, where, 1, MAX_EXPERTS)
        e_inter = integer(cfg, "moe_intermediate_size", where, 1, MAX_INTERMEDIATE)
        step = integer(cfg, "decoder_sparse_step", where, 0, MAX_LAYERS, default=1) or 1
        dense_only = set(indexes(cfg, "mlp_only_layers", where, MAX_LAYERS))
        layers = tuple(i for i in range(c["num_layers"]) if i not in dense_only and (i + 1) % step == 0)
    moe = MoESpec(
        num_experts=n_exp,
        experts_per_token=integer(cfg, "num_experts_per_tok", where, 1, n_exp),
        expert_intermediate_size=e_inter,
        layers=layers,
    )
    h = c["hidden_size"]
    return moe, (
        Linear(name="gate", in_features=h, out_features=n_exp, nn_linear=False, param_target_rank=1),
        # PEFT's rank_pattern doubles the rank of the fused gate_up stack: it stands for two projections
        Linear(
            name="experts.gate_up_proj",
            in_features=h,
            out_features=2 * e_inter,
            count=n_exp,
            nn_linear=False,
            param_target_rank=2,
        ),
        Linear(
            name="experts.down_proj",
            in_features=e_inter,
            out_features=h,
            count=n_exp,
            nn_linear=False,
            param_target_rank=1,
        ),
    )


def read(name: str, cfg: dict[str, Any], where: str) -> ModelSpec:
    if cfg["model_type"] == "mixtral":
        return llama_like(
            name,
            cfg,
            where,
            moe=_experts,
            decoder_layer="MixtralDecoderLayer",
            chat_templates=(("llamafactory", "mistral"),),
        )
    return llama_like(
        name,
        cfg,
        where,
        moe=_experts,
        qk_norm=True,
        decoder_layer="Qwen3MoeDecoderLayer",
        chat_templates=(("llamafactory", "qwen3"),),
    )


FAMILY = register(Family("moe", ("mixtral", "qwen3_moe"), read))
