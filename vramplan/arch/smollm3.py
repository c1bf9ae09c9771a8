"""SmolLM3 (transformers 5.25 ``models/smollm3/modeling_smollm3.py``): Llama's decoder with
rotary embeddings left out on some layers (``no_rope_layers``: ``SmolLM3Attention`` applies
``apply_rotary_pos_emb`` only where ``use_rope``). RoPE saves only its cos/sin tables, so the
NoPE layers save what a RoPE layer saves; the layers, norms and projections are Llama's.
``SmolLM3Config.tie_word_embeddings`` defaults to True (configuration_smollm3.py), and the
SmolLM3-3B config.json does not set it."""

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
        tied_default=True,
        decoder_layer="SmolLM3DecoderLayer",
    )


FAMILY = register(Family("smollm3", ("smollm3",), read, title="SmolLM3"))
