"""Model families: one module each, and the registry that reads a config.json into a ModelSpec.

A family module defines a :class:`Family` (its name, the ``model_type`` values it reads, its
reader) and registers it with one call, :func:`register`; importing this package imports the
built-in families below. Readers share the config helpers in :mod:`vramplan.arch.config` and the
Llama-style decoder in :mod:`vramplan.arch.decoder`.
"""

from __future__ import annotations

from vramplan.arch import (
    deepseek,
    gemma2,
    gemma3,
    glm4,
    gpt_oss,
    granite,
    llama,
    llama4,
    mistral3,
    moe,
    olmo2,
    phi3,
    qwen,
    qwen2,
    qwen2_vl,
    qwen3_vl,
    smollm3,
)
from vramplan.arch.registry import (
    Family,
    families,
    family,
    for_transformers,
    register,
    spec_from_config,
    supported_model_types,
)

#: the built-in families' model types
SUPPORTED_MODEL_TYPES = supported_model_types()
BUILT_IN = (
    deepseek.FAMILY,
    gemma2.FAMILY,
    gemma3.FAMILY,
    gemma3.MULTIMODAL,
    glm4.FAMILY,
    gpt_oss.FAMILY,
    granite.FAMILY,
    llama.FAMILY,
    mistral3.FAMILY,
    llama4.FAMILY,
    moe.FAMILY,
    olmo2.FAMILY,
    phi3.FAMILY,
    qwen.FAMILY,
    qwen2.FAMILY,
    qwen2_vl.FAMILY,
    qwen3_vl.FAMILY,
    smollm3.FAMILY,
)

__all__ = [
    "BUILT_IN",
    "SUPPORTED_MODEL_TYPES",
    "Family",
    "families",
    "family",
    "for_transformers",
    "register",
    "spec_from_config",
    "supported_model_types",
]
