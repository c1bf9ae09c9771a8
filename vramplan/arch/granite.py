"""Granite 3.x dense models (transformers 5.25 ``models/granite/modeling_granite.py``): Llama's
layers with four scalars from the config. ``GraniteModel`` multiplies the embeddings by
``embedding_multiplier``; ``GraniteDecoderLayer`` adds ``hidden_states * residual_multiplier``
to the residual after attention and after the MLP; ``GraniteAttention`` scales the scores by
``attention_multiplier`` instead of 1/sqrt(head_dim); ``GraniteForCausalLM`` divides the logits
by ``logits_scaling``. A product or quotient by a Python scalar saves nothing for backward and
the quotient replaces the logits it is made from, so the saved tensors are Llama's; the
parameters are too (no bias unless ``attention_bias``/``mlp_bias``; embeddings untied by
default, ``GraniteConfig.tie_word_embeddings = False``, while the 3.x releases set it true)."""

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
        decoder_layer="GraniteDecoderLayer",
        chat_templates=(("llamafactory", "granite3"),),
    )


FAMILY = register(Family("granite", ("granite",), read, title="Granite"))
