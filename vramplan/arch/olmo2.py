"""OLMo-2 (transformers 5.25 ``models/olmo2/modeling_olmo2.py``): Llama's projections and MLP,
but norms after the blocks instead of before them (``Olmo2DecoderLayer`` has only
``post_attention_layernorm`` and ``post_feedforward_layernorm``, each applied to the block's
output before the residual add), and ``q_norm``/``k_norm`` over the whole q and k projections
(``Olmo2RMSNorm(num_attention_heads * head_dim)``, ``Olmo2RMSNorm(num_key_value_heads *
head_dim)``), applied before the heads are split. ``Olmo2RMSNorm.forward`` returns
``(self.weight * hidden_states).to(input_dtype)``: the weight multiplies the fp32 normalized
tensor, so a trained norm saves it in fp32. Untied embeddings by default
(``Olmo2Config.tie_word_embeddings = False``)."""

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
        qk_norm=True,
        qk_norm_over_projection=True,
        norm_scale_fp32=True,
        decoder_layer="Olmo2DecoderLayer",
    )


FAMILY = register(Family("olmo2", ("olmo2",), read, title="OLMo-2"))
