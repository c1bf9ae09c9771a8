"""A model_type no family module reads: planned approximately as a Llama-style decoder.

Most decoders transformers ships since Llama (Helium, EXAONE 4, Seed-OSS, ...; OLMo-2, Granite,
GLM-4, SmolLM3 and Gemma 3's text model have family modules now) are a stack of q/k/v/o
attention and a gated MLP between RMSNorms, under the same
config keys (transformers ``LlamaConfig`` names: ``hidden_size``, ``num_hidden_layers``,
``num_attention_heads``, ``num_key_value_heads``, ``head_dim``, ``intermediate_size``,
``vocab_size``). Such a config is read with :func:`~vramplan.arch.decoder.llama_like`, untied
embeddings unless the config says so (the larger count), and ``ModelSpec.approximate`` says so;
the plan prints it and adds :data:`MARGIN_PCT` to every phase (the most this reading fell short
of a family module's on the catalog).

Only the types transformers ships are read so (tables/transformers_model_types.txt); any other is
refused in one line, as is what this reading cannot stand for, never guessed:
- a repository's own code (``auto_map``): nothing of it is read or run;
- experts (``num_experts``, ``num_local_experts``, ``n_routed_experts``) and MLA
  (``kv_lora_rank``): their weights and activations follow other rules;
- a vision-language wrapper (``vision_config``): its tower would go uncounted.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from vramplan.arch.decoder import llama_like
from vramplan.errors import VramplanError, shown
from vramplan.spec import ModelSpec
from vramplan.tables import tables_dir

#: keys whose presence means a structure the Llama-style reading would miscount
_OTHER_RULES = {
    "num_experts": "experts",
    "num_local_experts": "experts",
    "n_routed_experts": "experts",
    "moe_intermediate_size": "experts",
    "kv_lora_rank": "multi-head latent attention",
    "vision_config": "a vision tower",
    "audio_config": "an audio tower",
}
#: the decoder keys the reading needs
_NEEDED = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size")
#: the margin an approximate plan adds to every phase (memory/phases.py
#: ``with_approximation``), in %: above the most this reading fell short of the family modules'
#: own estimate on the catalog's dense decoders (Gemma-2 9B, LoRA without checkpointing, 4096
#: tokens, micro-batch 2: -16.4%, its fp32 norm products and soft-capped eager attention unseen).
#: Traced steps of small OLMo-2, Granite, GLM-4, SmolLM3 and Gemma 3 (text) decoders, read this way
#: (they have family modules now), came within -4.6% to +1.3% of the reading without it.
#: tests/test_generic_family.py holds both.
MARGIN_PCT = 20


@cache
def transformers_model_types() -> frozenset[str]:
    """The model types transformers builds with its own code (tables/transformers_model_types.txt:
    its ``CONFIG_MAPPING_NAMES``); a config of one of them may still carry an ``auto_map`` from
    before transformers shipped it (Phi-3's does)."""
    text = (tables_dir() / "transformers_model_types.txt").read_text(encoding="utf-8")
    return frozenset(line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#"))


def read(name: str, cfg: dict[str, Any], where: str, supported: tuple[str, ...]) -> ModelSpec:
    """``cfg`` of a model_type no family reads, as a Llama-style decoder, or one line on why not."""
    mt = cfg.get("model_type")
    listed = f"families read: {', '.join(supported)}"
    if mt not in transformers_model_types():
        if "auto_map" in cfg:
            raise VramplanError(
                "model_type",
                f"{shown(mt)} is not supported: it is the repository's own code (auto_map in {where}) and no"
                f" family module reads it; vramplan never runs a repository's code ({listed})",
            )
        raise VramplanError(
            "model_type",
            f"{shown(mt)} is not supported ({where}): no family module reads it and transformers does not ship it"
            f" ({listed})",
        )
    text = cfg.get("text_config")
    if isinstance(text, dict) and "hidden_size" not in cfg:
        cfg = {**text, "model_type": text.get("model_type", mt), "vision_config": cfg.get("vision_config")}
        cfg = {k: v for k, v in cfg.items() if v is not None}
    other = sorted({what for key, what in _OTHER_RULES.items() if cfg.get(key) is not None})
    missing = [k for k in _NEEDED if k not in cfg]
    if other or missing:
        why = f"it has {' and '.join(other)}" if other else f"it lacks {', '.join(missing)}"
        raise VramplanError(
            "model_type",
            f"{shown(mt)} is not supported ({where}): no family module reads it, and {why}, which the"
            f" approximate Llama-style reading does not count ({listed})",
        )
    spec = llama_like(name, cfg, where)
    return spec.model_copy(update={"approximate": f"no family module for {mt}"})
