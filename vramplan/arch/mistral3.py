"""Mistral 3 (transformers 5.25 ``models/mistral3/modeling_mistral3.py``, model_type ``mistral3``,
``Mistral3ForConditionalGeneration``: Mistral-Small-3.1 and 3.2): a Mistral text model
(``text_config``, model_type ``mistral``, read by arch/llama.py) behind a Pixtral vision encoder
(``models/pixtral/modeling_pixtral.py`` ``PixtralVisionModel``) and ``Mistral3MultiModalProjector``.

Pixtral: a ``patch_conv`` Conv2d without bias, ``ln_pre`` (RMSNorm), blocks of q/k/v/o
projections (no bias), an RMSNorm before each half (``attention_norm``, ``ffn_norm``) and a gated
MLP (gate/up/down, no bias), with 2D rotary positions (``PixtralVisionRotaryEmbedding``: no
parameters). Images keep their aspect: the processor scales one down to fit ``image_size`` (1540)
on its longest edge and rounds each side up to a multiple of patch x merge (28); the tower runs
every image of the micro-batch as one sequence with a block-diagonal float mask. The projector
RMS-normalizes the patches, merges each 2x2 of them (``Mistral3PatchMerger``: d·4 -> d, no bias)
and maps them through ``linear_1`` (d -> text width), GELU and ``linear_2`` (text width -> text
width), biased when ``multimodal_projector_bias``.

Tied embeddings differ by transformers version. ``Mistral3Config.tie_word_embeddings`` defaults
to True in transformers 5 (huggingface/transformers#43429, for Ministral 3, whose text model ties)
and ``PreTrainedModel`` ties ``lm_head`` to the embeddings from that top-level flag, so a config
that leaves it out, as the Mistral-Small releases do, is built with one shared matrix (the
meta-device model of transformers 5.25 counts 23,340,272,640 parameters for Mistral-Small-3.1;
huggingface/transformers#42313 reports the same tying for 3.2). transformers 4 tied by the text
model's own flag (``MistralConfig.tie_word_embeddings = False``): a separate 131,072 x 5,120 head,
24,011,361,280 parameters. :func:`read` gives transformers 5's model, :func:`restack` either.
"""

from __future__ import annotations

from typing import Any

from vramplan.arch import llama
from vramplan.arch.config import flag, integer
from vramplan.arch.registry import Family, register
from vramplan.errors import VramplanError, shown
from vramplan.limits import (
    MAX_CHANNELS,
    MAX_HEADS,
    MAX_HIDDEN,
    MAX_IMAGE_SIDE,
    MAX_INTERMEDIATE,
    MAX_LAYERS,
    MAX_PATCH,
)
from vramplan.spec import Linear, ModelSpec, VisionSpec

#: transformers 5.25 ``PixtralVisionConfig``'s defaults
VISION_DEFAULTS: dict[str, Any] = {"num_channels": 3, "image_size": 1024, "patch_size": 16}


def pixtral_tower(v: dict[str, Any], cfg: dict[str, Any], lm_hidden: int, where: str) -> VisionSpec:
    """``PixtralVisionModel`` and ``Mistral3MultiModalProjector`` from ``vision_config`` and the
    top-level ``spatial_merge_size`` and ``multimodal_projector_bias``."""
    pre = "vision_config."
    v = {**VISION_DEFAULTS, **{k: x for k, x in v.items() if x is not None}}
    d = integer(v, "hidden_size", where, 1, MAX_HIDDEN, prefix=pre)
    inter = integer(v, "intermediate_size", where, 1, MAX_INTERMEDIATE, prefix=pre)
    patch = integer(v, "patch_size", where, 1, MAX_PATCH, prefix=pre)
    layer = cfg.get("vision_feature_layer", -1)
    if not isinstance(layer, int) or isinstance(layer, bool):
        # a list concatenates several layers' outputs: linear_1 grows, and no release does it
        raise VramplanError("vision_feature_layer", f"one layer is read, got {shown(layer)} ({where})")
    blocks = tuple(
        Linear(name=f"attention.{p}", in_features=d, out_features=d) for p in ("q_proj", "k_proj", "v_proj", "o_proj")
    ) + (
        Linear(name="feed_forward.gate_proj", in_features=d, out_features=inter),
        Linear(name="feed_forward.up_proj", in_features=d, out_features=inter),
        Linear(name="feed_forward.down_proj", in_features=inter, out_features=d),
    )
    return VisionSpec(
        kind="pixtral",
        depth=integer(v, "num_hidden_layers", where, 1, MAX_LAYERS, prefix=pre),
        hidden_size=d,
        num_heads=integer(v, "num_attention_heads", where, 1, MAX_HEADS, prefix=pre),
        intermediate_size=inter,
        patch_size=patch,
        in_channels=integer(v, "num_channels", where, 1, MAX_CHANNELS, prefix=pre),
        spatial_merge_size=integer(cfg, "spatial_merge_size", where, 1, MAX_PATCH, default=2),
        gated_mlp=True,
        norm="rmsnorm",
        out_hidden_size=lm_hidden,
        pre_norm=True,
        projector="merge_mlp",
        projector_bias=flag(cfg, "multimodal_projector_bias", where, False),
        longest_edge=integer(v, "image_size", where, patch, MAX_IMAGE_SIDE, prefix=pre),
        row_break_tokens=True,
        one_sequence=True,
        # a trained block keeps 12 n x d tensors: its two RMSNorms 4 each (the fp32 input, the 16-bit cast,
        # the weight's product, in 16-bit units), the rotated q and k, v and the attention output; and the
        # gated MLP's 4 n x I (traced: a two-block tower of this config, full fine-tuning without
        # checkpointing at 560x560, tests/test_mistral3.py)
        block_saved_hidden=12,
        blocks=blocks,
    )


def read(name: str, cfg: dict[str, Any], where: str) -> ModelSpec:
    """``Mistral3ForConditionalGeneration`` as transformers 5 builds it (see the module's note)."""
    text = cfg.get("text_config")
    vcfg = cfg.get("vision_config")
    if not isinstance(text, dict) or not isinstance(vcfg, dict):
        raise VramplanError(where, "a mistral3 config needs 'text_config' and 'vision_config' objects")
    if text.get("model_type", "mistral") != "mistral":
        raise VramplanError(
            "text_config.model_type",
            f"{shown(text.get('model_type'))} is not read yet: Mistral 3 is planned with its Mistral text model",
        )
    lm = {**{k: x for k, x in text.items() if x is not None or k == "sliding_window"}, "model_type": "mistral"}
    spec = llama.read(name, lm, where)
    tied = flag(cfg, "tie_word_embeddings", where, True)  # transformers 5's Mistral3Config default
    vision = pixtral_tower(vcfg, cfg, spec.hidden_size, where)
    return spec.model_copy(
        update={
            "model_type": "mistral3",
            "transformers_module": "mistral3",
            "tie_word_embeddings": tied,
            "vision": vision,
            # LLaMA-Factory data/template.py: register_template(name="mistral_small", ...)
            "chat_templates": (("llamafactory", "mistral_small"),),
            "transformers": 5,
            "torch_dtype": spec.torch_dtype if "torch_dtype" in text else cfg.get("torch_dtype", spec.torch_dtype),
        }
    )


def restack(spec: ModelSpec, major: int) -> ModelSpec:
    """transformers 4 ties by the text model's flag (4.57.6 modeling_utils.py ``tie_weights``:
    ``get_text_config(decoder=True).tie_word_embeddings``), which the releases leave to
    ``MistralConfig``'s False; 5 by the top-level one (absent: tied)."""
    return spec.model_copy(update={"tie_word_embeddings": major == 5, "transformers": major})


def stack_effect(major: int) -> str:
    if major == 4:
        return "lm_head apart from the embeddings (the text model's tie_word_embeddings)"
    return "lm_head tied to the embeddings (Mistral3Config's tie_word_embeddings default)"


FAMILY = register(
    Family("mistral3", ("mistral3",), read, title="Mistral 3", restack=restack, stack_effect=stack_effect)
)
