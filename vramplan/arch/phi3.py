"""Phi-3 (transformers ``models/phi3/modeling_phi3.py``): one fused ``qkv_proj`` whose output
``Phi3Attention`` slices into q, k and v (views: the whole buffer stays saved), one fused
``gate_up_proj``, no biases."""

from __future__ import annotations

from typing import Any

from vramplan.arch.decoder import llama_like
from vramplan.arch.registry import Family, register
from vramplan.spec import ModelSpec


def read(name: str, cfg: dict[str, Any], where: str) -> ModelSpec:
    return llama_like(
        name,
        cfg,
        where,
        qkv_bias=False,
        o_bias=False,
        fused=True,
        qkv_split_views=True,
        decoder_layer="Phi3DecoderLayer",
        chat_templates=(("llamafactory", "phi"),),
    )


FAMILY = register(Family("phi3", ("phi3",), read))
