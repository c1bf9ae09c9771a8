"""Qwen2 (and Qwen1.5, which ships as ``qwen2``) and Qwen3 (transformers ``models/qwen2``,
``models/qwen3``): Qwen2Attention has a bias on q/k/v only; Qwen3 reads ``attention_bias``
and adds q_norm/k_norm over head_dim."""

from __future__ import annotations

from typing import Any

from vramplan.arch.decoder import llama_like
from vramplan.arch.registry import Family, register
from vramplan.spec import ModelSpec


def read(name: str, cfg: dict[str, Any], where: str) -> ModelSpec:
    if cfg["model_type"] == "qwen3":
        return llama_like(
            name,
            cfg,
            where,
            qk_norm=True,
            decoder_layer="Qwen3DecoderLayer",
            chat_templates=(("llamafactory", "qwen3"),),
        )
    return llama_like(
        name,
        cfg,
        where,
        qkv_bias=True,
        o_bias=False,
        decoder_layer="Qwen2DecoderLayer",
        chat_templates=(("llamafactory", "qwen"),),
    )


FAMILY = register(Family("qwen2", ("qwen2", "qwen3"), read))
