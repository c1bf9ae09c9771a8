"""Llama and Mistral (transformers ``models/llama``, ``models/mistral``): the plain decoder,
``attention_bias`` and ``mlp_bias`` from the config. Yi ships as ``llama`` with its own
64k vocabulary."""

from __future__ import annotations

from typing import Any

from vramplan.arch.decoder import llama_like
from vramplan.arch.registry import Family, register
from vramplan.spec import ModelSpec

#: (decoder layer class, LLaMA-Factory template) per model type
NAMES = {"llama": ("LlamaDecoderLayer", None), "mistral": ("MistralDecoderLayer", "mistral")}


def llamafactory_template(vocab_size: int) -> str:
    """LLaMA-Factory's template for a ``llama`` config, told apart by its vocabulary."""
    if vocab_size == 64000:  # Yi (llama architecture, its own 64k vocabulary)
        return "yi"
    return "llama3" if vocab_size >= 128000 else "llama2"


def read(name: str, cfg: dict[str, Any], where: str) -> ModelSpec:
    layer, template = NAMES[cfg["model_type"]]
    spec = llama_like(name, cfg, where, decoder_layer=layer)
    template = template or llamafactory_template(spec.vocab_size)
    return spec.model_copy(update={"chat_templates": (("llamafactory", template),)})


FAMILY = register(Family("llama", tuple(NAMES), read))
