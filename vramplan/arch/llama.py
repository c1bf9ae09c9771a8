"""Llama and Mistral (transformers ``models/llama``, ``models/mistral``): the plain decoder,
``attention_bias`` and ``mlp_bias`` from the config. Yi ships as ``llama`` with its own
64k vocabulary. Mistral attends through ``sliding_window`` on every layer when its config sets
one (transformers 5.25 ``MistralModel.forward``: ``create_sliding_window_causal_mask`` unless
``config.sliding_window is None``; ``MistralConfig.sliding_window`` defaults to 4096 when the
key is absent; Mistral-7B-v0.1 writes 4096, v0.3 null); ``LlamaModel`` never does."""

from __future__ import annotations

from typing import Any

from vramplan.arch.config import integer
from vramplan.arch.decoder import llama_like
from vramplan.arch.registry import Family, register
from vramplan.limits import MAX_LAYERS, MAX_POSITIONS
from vramplan.spec import ModelSpec

#: ``MistralConfig.sliding_window``'s default (transformers 5.25 configuration_mistral.py, 4.57 alike)
MISTRAL_DEFAULT_WINDOW = 4096

#: (decoder layer class, LLaMA-Factory template) per model type
NAMES = {"llama": ("LlamaDecoderLayer", None), "mistral": ("MistralDecoderLayer", "mistral")}


def llamafactory_template(vocab_size: int) -> str:
    """LLaMA-Factory's template for a ``llama`` config, told apart by its vocabulary."""
    if vocab_size == 64000:  # Yi (llama architecture, its own 64k vocabulary)
        return "yi"
    return "llama3" if vocab_size >= 128000 else "llama2"


def swift_template(cfg: dict[str, Any], vocab_size: int) -> str:
    """ms-swift 4.6's template for a ``llama`` config (swift/model/models/llama.py registers
    Llama-2 with ``llama``, Llama-3 with ``llama3``, Llama-3.1 to 3.3 with ``llama3_2``, 3.1 on
    told apart by its ``rope_scaling`` of ``rope_type`` llama3; swift/model/models/yi.py registers
    Yi under model type ``yi`` with ``chatml``)."""
    if vocab_size < 128000:
        return "chatml" if vocab_size == 64000 else "llama"  # Yi: model type yi, template chatml
    rope = cfg.get("rope_scaling") or cfg.get("rope_parameters") or {}
    return "llama3_2" if isinstance(rope, dict) and rope.get("rope_type") == "llama3" else "llama3"


def sliding_window(cfg: dict[str, Any], where: str) -> tuple[int, int]:
    """(sliding layers, window) of a Mistral config: every layer slides when the window is set
    (absent: the config class's default; null: none). Llama has no window."""
    if cfg["model_type"] != "mistral":
        return 0, 0
    default = 0 if "sliding_window" in cfg else MISTRAL_DEFAULT_WINDOW  # written null: no window
    window = integer(cfg, "sliding_window", where, 0, MAX_POSITIONS, default=default)
    layers = integer(cfg, "num_hidden_layers", where, 1, MAX_LAYERS)
    return (layers if window else 0), window


def read(name: str, cfg: dict[str, Any], where: str) -> ModelSpec:
    layer, template = NAMES[cfg["model_type"]]
    sliding, window = sliding_window(cfg, where)
    spec = llama_like(name, cfg, where, decoder_layer=layer, sliding_layers=sliding, sliding_window=window)
    templates: tuple[tuple[str, str], ...] = (("llamafactory", template or llamafactory_template(spec.vocab_size)),)
    if cfg["model_type"] != "llama":
        return spec.model_copy(update={"chat_templates": templates})
    # swift resolves a model by its hub id, else by the config's architecture, which several of its
    # llama model types share (swift 4.6.0 refuses meta-llama/Llama-3.1-8B, registered under its old
    # id Meta-Llama-3.1-8B): the emitted command names its model type and template
    templates += (("swift", swift_template(cfg, spec.vocab_size)),)
    model_type = "yi" if spec.vocab_size == 64000 else "llama"
    return spec.model_copy(update={"chat_templates": templates, "trainer_model_types": (("swift", model_type),)})


FAMILY = register(Family("llama", tuple(NAMES), read))
