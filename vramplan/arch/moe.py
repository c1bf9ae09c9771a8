"""Mixture-of-experts families: Mixtral and Qwen3-MoE (transformers ``models/mixtral``,
``models/qwen3_moe``). transformers 5 holds the experts as fused ``nn.Parameter`` tensors
(``MixtralExperts`` / ``Qwen3MoeExperts``: ``gate_up_proj`` and ``down_proj``) beside a router
weight (``MixtralTopKRouter`` / ``Qwen3MoeTopKRouter``): none is an ``nn.Linear``. transformers 4
held each expert as an MLP of ``nn.Linear`` layers in an ``nn.ModuleList`` beside an ``nn.Linear``
router (``MixtralSparseMoeBlock``: ``gate``, ``experts[i].w1/w2/w3`` of
``MixtralBlockSparseTop2MLP``; ``Qwen3MoeSparseMoeBlock``: ``gate``, ``experts[i].gate_proj/up_proj/
down_proj`` of ``Qwen3MoeMLP``): :func:`restack` gives that layout (vramplan/stack.py)."""

from __future__ import annotations

from typing import Any

from vramplan.arch.config import indexes, integer
from vramplan.arch.decoder import llama_like
from vramplan.arch.registry import Family, register
from vramplan.limits import MAX_EXPERTS, MAX_INTERMEDIATE, MAX_LAYERS
from vramplan.spec import Linear, ModelSpec, MoESpec

#: transformers 4's per-expert projection names (input, output width as a multiple of the expert's
#: intermediate size or of hidden), by model_type: Mixtral ``w1``/``w3``/``w2``, Qwen3-MoE Llama's
_T4_EXPERTS = {
    "mixtral": ("w1", "w3", "w2"),
    "qwen3_moe": ("gate_proj", "up_proj", "down_proj"),
}


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
    return moe, _fused(c["hidden_size"], n_exp, e_inter)


def _fused(h: int, n_exp: int, e_inter: int) -> tuple[Linear, ...]:
    """transformers 5: the router's bare weight and the two fused expert stacks."""
    return (
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


def restack(spec: ModelSpec, major: int) -> ModelSpec:
    """``spec`` (transformers 5's fused experts, as :func:`read` gives it) as transformers ``major``
    builds it. 4: an ``nn.Linear`` router and ``E`` per-expert ``nn.Linear`` gate, up and down
    projections, which bitsandbytes quantizes and PEFT's ``all-linear`` adapts one by one."""
    if major == 5:
        return spec.model_copy(update={"moe_mlp": _experts_t5(spec), "transformers": 5})
    assert spec.moe is not None
    h, n_exp, inter = spec.hidden_size, spec.moe.num_experts, spec.moe.expert_intermediate_size
    gate, up, down = _T4_EXPERTS[spec.model_type]
    experts = tuple(
        Linear(name=f"experts.{n}", in_features=i, out_features=o, count=n_exp, routed=True)
        for n, i, o in ((gate, h, inter), (up, h, inter), (down, inter, h))
    )
    moe_mlp = (Linear(name="gate", in_features=h, out_features=n_exp), *experts)
    return spec.model_copy(update={"moe_mlp": moe_mlp, "transformers": 4})


def _experts_t5(spec: ModelSpec) -> tuple[Linear, ...]:
    assert spec.moe is not None
    h, n_exp, inter = spec.hidden_size, spec.moe.num_experts, spec.moe.expert_intermediate_size
    return _fused(h, n_exp, inter)


def read(name: str, cfg: dict[str, Any], where: str) -> ModelSpec:
    """The model as transformers 5 builds it (fused experts); :func:`restack` gives transformers 4's."""
    if cfg["model_type"] == "mixtral":
        spec = llama_like(
            name,
            cfg,
            where,
            moe=_experts,
            decoder_layer="MixtralDecoderLayer",
            chat_templates=(("llamafactory", "mistral"),),
        )
    else:
        spec = llama_like(
            name,
            cfg,
            where,
            moe=_experts,
            qk_norm=True,
            decoder_layer="Qwen3MoeDecoderLayer",
            chat_templates=(("llamafactory", "qwen3"),),
        )
    return spec.model_copy(update={"transformers": 5})


FAMILY = register(Family("moe", ("mixtral", "qwen3_moe"), read, restack=restack))
