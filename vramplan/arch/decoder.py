"""The Llama-style decoder most families share (transformers ``LlamaAttention``, ``LlamaMLP``,
``LlamaRMSNorm``): a family module calls :func:`llama_like` with what it does differently
(biases, fused projections, experts, capabilities)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from vramplan.arch.config import common, decoder_linears, flag, number
from vramplan.limits import MAX_SOFTCAP
from vramplan.spec import Linear, ModelSpec, MoESpec

#: reads a config's experts: (config, where, the common keys) -> (MoESpec, the MoE layer's linears)
MoEReader = Callable[[dict[str, Any], str, dict[str, Any]], tuple[MoESpec, tuple[Linear, ...]]]


def llama_like(
    name: str,
    cfg: dict[str, Any],
    where: str,
    *,
    qkv_bias: bool | None = None,
    o_bias: bool | None = None,
    fused: bool = False,
    fused_mlp: bool | None = None,
    tied_default: bool = False,
    attn_softcap: bool = False,
    moe: MoEReader | None = None,
    **capabilities: Any,
) -> ModelSpec:
    """A gated-MLP decoder read from ``cfg``. ``qkv_bias``/``o_bias`` None: the config's
    ``attention_bias``; ``fused``: Phi-3's ``qkv_proj`` and ``gate_up_proj`` (``fused_mlp``: the
    MLP's alone when it differs, GLM-4's ``gate_up_proj`` beside separate q/k/v); ``attn_softcap``:
    read ``attn_logit_softcapping``; ``capabilities``: further ModelSpec fields the family sets."""
    c = common(cfg, where, tied_default=tied_default)
    fused_up = fused if fused_mlp is None else fused_mlp
    if qkv_bias is None or o_bias is None:
        qkv_bias = o_bias = flag(cfg, "attention_bias", where, False)
    attn, mlp = decoder_linears(
        c["hidden_size"],
        c["num_heads"] * c["head_dim"],
        c["num_kv_heads"] * c["head_dim"],
        c["intermediate_size"],
        qkv_bias=qkv_bias,
        o_bias=o_bias,
        mlp_bias=flag(cfg, "mlp_bias", where, False),
        fused_qkv=fused,
        fused_gate_up=fused_up,
    )
    experts, moe_mlp = moe(cfg, where, c) if moe is not None else (None, ())
    return ModelSpec(
        name=name,
        model_type=cfg["model_type"],
        gated_mlp=True,
        attention=attn,
        mlp=mlp,
        moe=experts,
        moe_mlp=moe_mlp,
        final_logit_softcapping=number(cfg, "final_logit_softcapping", where, MAX_SOFTCAP, default=None),
        attn_logit_softcapping=number(cfg, "attn_logit_softcapping", where, MAX_SOFTCAP, default=None)
        if attn_softcap
        else None,
        fused_qkv=fused,
        fused_gate_up=fused_up,
        **{"transformers_module": cfg["model_type"], **capabilities},
        **c,
    )
