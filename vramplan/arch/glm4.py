"""GLM-4 (the 0414 releases; transformers 5.25 ``models/glm4/modeling_glm4.py``, model_type
``glm4``): separate q/k/v projections with a bias when ``attention_bias`` (which
``Glm4Config`` defaults to True) and an ``o_proj`` without one (``bias=False`` whatever the
config says); ``Glm4MLP`` fuses gate and up into one ``gate_up_proj`` (``bias=False``) and
chunks its output in two, so the saved activation and gate are views that keep the whole
fused output alive (what the unfused gate and up outputs cost, 2 x t x I). Four
``Glm4RMSNorm`` per layer (``input_layernorm``, ``post_self_attn_layernorm``,
``post_attention_layernorm``, ``post_mlp_layernorm``), each Llama's (``weight *
hidden_states.to(input_dtype)``: a 16-bit product). Rotary embeddings over half of each head
(``partial_rotary_factor`` 0.5) save only cos/sin. Untied embeddings by default
(``Glm4Config.tie_word_embeddings = False``)."""

from __future__ import annotations

from typing import Any

from vramplan.arch.config import flag
from vramplan.arch.decoder import llama_like
from vramplan.arch.registry import Family, register
from vramplan.spec import ModelSpec


def read(name: str, cfg: dict[str, Any], where: str) -> ModelSpec:
    return llama_like(
        name,
        cfg,
        where,
        qkv_bias=flag(cfg, "attention_bias", where, True),
        o_bias=False,
        fused_mlp=True,
        norms_per_layer=4,
        decoder_layer="Glm4DecoderLayer",
        chat_templates=(("llamafactory", "glm4"),),
    )


FAMILY = register(Family("glm4", ("glm4",), read, title="GLM-4"))
