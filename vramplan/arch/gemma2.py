"""Gemma-2 (transformers ``models/gemma2/modeling_gemma2.py``): four norms per layer
(pre/post attention and MLP), soft-capped attention scores and logits, embeddings tied by
default (``Gemma2Config.tie_word_embeddings = True``), and ``Gemma2RMSNorm``'s
``output * (1.0 + self.weight.float())``, a product in fp32."""

from __future__ import annotations

from typing import Any

from vramplan.arch.decoder import llama_like
from vramplan.arch.registry import Family, register
from vramplan.spec import ModelSpec

#: transformers 5 refuses sdpa for Gemma-2: ``Gemma2PreTrainedModel._supports_sdpa = False``
#: ("sdpa does not support softcapping", models/gemma2/modeling_gemma2.py), which
#: ``PreTrainedModel._sdpa_can_dispatch`` (modeling_utils.py) turns into a ValueError when sdpa
#: is asked for; ``sdpa_attention_forward`` (integrations/sdpa_attention.py) refuses ``softcap``.
ATTENTIONS = ("eager", "flash-attn-2")


def read(name: str, cfg: dict[str, Any], where: str) -> ModelSpec:
    return llama_like(
        name,
        cfg,
        where,
        tied_default=True,
        attn_softcap=True,
        norms_per_layer=4,
        norm_scale_fp32=True,
        attentions=ATTENTIONS,
        decoder_layer="Gemma2DecoderLayer",
        chat_templates=(("llamafactory", "gemma2"),),
    )


FAMILY = register(Family("gemma2", ("gemma2",), read))
