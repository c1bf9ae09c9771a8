"""Gemma 3's text model (transformers 5.25 ``models/gemma3/modeling_gemma3.py``, model_type
``gemma3_text``, ``Gemma3ForCausalLM``): Gemma-2's four norms per layer (input, post-attention,
pre- and post-feedforward), each ``Gemma3RMSNorm`` computing ``output * (1.0 +
self.weight.float())`` on the fp32 normalized input (a product in fp32), plus ``q_norm`` and
``k_norm``, ``Gemma3RMSNorm(head_dim)`` on each head of q and k. Layers alternate between
sliding-window and global attention (``layer_types``; the window only masks scores, so each
layer saves what a global one saves: the same q, k, v and output, and under eager the same
s x s probabilities; under sdpa each sliding layer also keeps the float bias torch makes of
its boolean mask, ``memory/activations.py`` ``window_mask_bytes``). Soft-capping is read from
the config (``attn_logit_softcapping`` and ``final_logit_softcapping`` are null in the
released configs); unlike Gemma-2, sdpa is allowed
(``Gemma3PreTrainedModel._supports_sdpa = True``). Embeddings are tied by default
(``Gemma3TextConfig.tie_word_embeddings = True``) and scaled by sqrt(hidden_size) through a
buffer (``Gemma3TextScaledWordEmbedding.embed_scale``), which is no parameter."""

from __future__ import annotations

from typing import Any

from vramplan.arch.config import integer
from vramplan.arch.decoder import llama_like
from vramplan.arch.registry import Family, register
from vramplan.errors import VramplanError, shown
from vramplan.limits import MAX_LAYERS, MAX_POSITIONS
from vramplan.spec import ModelSpec


def sliding_layers(cfg: dict[str, Any], where: str, layers: int) -> int:
    """How many layers attend through the window: ``layer_types``' ``sliding_attention`` entries
    or, without that key, what ``Gemma3TextConfig.__post_init__`` derives from
    ``sliding_window_pattern`` (default 6): layer i slides unless (i + 1) is a multiple of it."""
    types = cfg.get("layer_types")
    if types is not None:
        if not isinstance(types, list) or len(types) != layers:
            raise VramplanError(
                "layer_types", f"must list one attention type per layer ({layers}), got {shown(types)} ({where})"
            )
        return sum(1 for t in types if t == "sliding_attention")
    pattern = integer(cfg, "sliding_window_pattern", where, 1, MAX_LAYERS, default=6)
    return sum(1 for i in range(layers) if (i + 1) % pattern)


def read(name: str, cfg: dict[str, Any], where: str) -> ModelSpec:
    layers = integer(cfg, "num_hidden_layers", where, 1, MAX_LAYERS)
    window = integer(cfg, "sliding_window", where, 0, MAX_POSITIONS, default=0)
    return llama_like(
        name,
        cfg,
        where,
        sliding_layers=sliding_layers(cfg, where, layers) if window else 0,
        sliding_window=window,
        tied_default=True,
        attn_softcap=True,
        norms_per_layer=4,
        norm_scale_fp32=True,
        qk_norm=True,
        decoder_layer="Gemma3DecoderLayer",
        chat_templates=(("llamafactory", "gemma3"),),
    )


FAMILY = register(Family("gemma3_text", ("gemma3_text",), read, title="Gemma 3 (text)"))
