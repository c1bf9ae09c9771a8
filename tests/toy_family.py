"""A toy model family: ``model_type`` "toyllama", read as Llama is, whose attention keeps q, k
and v as views of one buffer (``qkv_split_views``, as Phi-3's does). Adding a family takes this:
one module, and its one ``register`` call (tests/test_arch.py plans a config of this type)."""

from __future__ import annotations

from typing import Any

from vramplan.arch import Family, register
from vramplan.arch.decoder import llama_like
from vramplan.spec import ModelSpec


def read(name: str, cfg: dict[str, Any], where: str) -> ModelSpec:
    return llama_like(name, cfg, where, qkv_split_views=True, decoder_layer="LlamaDecoderLayer", transformers_module="")


FAMILY = register(Family("toyllama", ("toyllama",), read))
