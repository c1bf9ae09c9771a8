"""Phi-3 (transformers ``models/phi3/modeling_phi3.py``): one fused ``qkv_proj`` whose output
``Phi3Attention`` slices into q, k and v (views: the whole buffer stays saved), one fused
``gate_up_proj``, no biases. Every layer attends through ``sliding_window`` when the config sets
one (``Phi3Model.forward``: ``create_sliding_window_causal_mask`` unless ``config.sliding_window is
None``, the config class's default; transformers 5.25 and 4.57 alike): Phi-3-mini writes 2047, so
from 2047 tokens on sdpa keeps the mask as a bias in every layer (memory/activations.py
``window_mask_bytes``; one key/value head per query head, nothing repeated)."""

from __future__ import annotations

from typing import Any

from vramplan.arch.config import integer
from vramplan.arch.decoder import llama_like
from vramplan.arch.registry import Family, register
from vramplan.limits import MAX_LAYERS, MAX_POSITIONS
from vramplan.spec import ModelSpec


def read(name: str, cfg: dict[str, Any], where: str) -> ModelSpec:
    window = integer(cfg, "sliding_window", where, 0, MAX_POSITIONS, default=0)
    layers = integer(cfg, "num_hidden_layers", where, 1, MAX_LAYERS)
    return llama_like(
        name,
        cfg,
        where,
        sliding_layers=layers if window else 0,
        sliding_window=window,
        qkv_bias=False,
        o_bias=False,
        fused=True,
        qkv_split_views=True,
        decoder_layer="Phi3DecoderLayer",
        chat_templates=(("llamafactory", "phi"),),
    )


FAMILY = register(Family("phi3", ("phi3",), read))
