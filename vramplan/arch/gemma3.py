"""Gemma 3's text model (transformers 5.25 ``models/gemma3/modeling_gemma3.py``, model_type
``gemma3_text``, ``Gemma3ForCausalLM``): Gemma-2's four norms per layer (input, post-attention,
pre- and post-feedforward), each ``Gemma3RMSNorm`` computing ``output * (1.0 +
self.weight.float())`` on the fp32 normalized input (a product in fp32), plus ``q_norm`` and
``k_norm``, ``Gemma3RMSNorm(head_dim)`` on each head of q and k. Layers alternate between
sliding-window and global attention (``layer_types``; the window only masks scores, so each
layer saves what a global one saves: the same q, k, v and output, and under eager the same
s x s probabilities). Soft-capping is read from the config (``attn_logit_softcapping`` and
``final_logit_softcapping`` are null in the released configs); unlike Gemma-2, sdpa is allowed
(``Gemma3PreTrainedModel._supports_sdpa = True``). Embeddings are tied by default
(``Gemma3TextConfig.tie_word_embeddings = True``) and scaled by sqrt(hidden_size) through a
buffer (``Gemma3TextScaledWordEmbedding.embed_scale``), which is no parameter."""

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
        attn_softcap=True,
        norms_per_layer=4,
        norm_scale_fp32=True,
        qk_norm=True,
        decoder_layer="Gemma3DecoderLayer",
        chat_templates=(("llamafactory", "gemma3"),),
    )


FAMILY = register(Family("gemma3_text", ("gemma3_text",), read, title="Gemma 3 (text)"))
