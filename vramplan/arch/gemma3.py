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
buffer (``Gemma3TextScaledWordEmbedding.embed_scale``), which is no parameter.

The multimodal model (model_type ``gemma3``, ``Gemma3ForConditionalGeneration``, the 4B, 12B and
27B releases) puts that text model behind a SigLIP vision tower (transformers 5.25
``models/siglip/modeling_siglip.py`` ``SiglipVisionModel``) and ``Gemma3MultiModalProjector``:
see :func:`read_multimodal`."""

from __future__ import annotations

from typing import Any

from vramplan.arch.config import flag, integer
from vramplan.arch.decoder import llama_like
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
    MAX_POSITIONS,
    MAX_VISION_QUERIES,
)
from vramplan.spec import Linear, ModelSpec, VisionSpec

#: transformers 5.25 ``Gemma3TextConfig``'s defaults for the keys the released multimodal configs
#: leave out of their ``text_config`` (the 4B's names only hidden_size, intermediate_size,
#: num_hidden_layers, rope_scaling and sliding_window)
TEXT_DEFAULTS: dict[str, Any] = {
    "vocab_size": 262_208,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "head_dim": 256,
    "hidden_activation": "gelu_pytorch_tanh",
    "max_position_embeddings": 131_072,
    "tie_word_embeddings": True,
    "sliding_window": 4096,
}
#: transformers 5.25 ``SiglipVisionConfig``'s defaults
VISION_DEFAULTS: dict[str, Any] = {"num_channels": 3, "image_size": 224, "patch_size": 16}


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


def read(name: str, cfg: dict[str, Any], where: str, **capabilities: Any) -> ModelSpec:
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
        **capabilities,
    )


def siglip_tower(v: dict[str, Any], lm_hidden: int, tokens: int, where: str) -> VisionSpec:
    """SigLIP's vision model without its pooling head (``vision_use_head`` false in every
    release): a biased ``patch_embedding`` Conv2d, a learned ``position_embedding`` of
    (image_size / patch_size)² rows, blocks of q/k/v/out projections and fc1/fc2 (all biased,
    ``SiglipAttention``, ``SiglipMLP``: no gate) with two LayerNorms, and ``post_layernorm``.
    The projector (``Gemma3MultiModalProjector``) average-pools the patch grid to ``tokens``
    (``mm_tokens_per_image``) positions, RMS-normalizes them (``mm_soft_emb_norm``) and maps them
    to the text width with one ``mm_input_projection_weight`` (no bias)."""
    pre = "vision_config."
    v = {**VISION_DEFAULTS, **{k: x for k, x in v.items() if x is not None}}
    d = integer(v, "hidden_size", where, 1, MAX_HIDDEN, prefix=pre)
    inter = integer(v, "intermediate_size", where, 1, MAX_INTERMEDIATE, prefix=pre)
    patch = integer(v, "patch_size", where, 1, MAX_PATCH, prefix=pre)
    side = integer(v, "image_size", where, patch, MAX_IMAGE_SIDE, prefix=pre)
    if flag(v, "vision_use_head", where, True):
        raise VramplanError(f"{pre}vision_use_head", f"Gemma 3 builds its tower without SigLIP's head ({where})")
    grid = side // patch
    per_side = int(tokens**0.5)
    if per_side * per_side != tokens or grid % per_side:
        raise VramplanError(
            "mm_tokens_per_image", f"must be a square whose side divides the {grid}x{grid} patch grid ({where})"
        )
    blocks = tuple(
        Linear(name=f"self_attn.{p}", in_features=d, out_features=d, bias=True)
        for p in ("q_proj", "k_proj", "v_proj", "out_proj")
    ) + (
        Linear(name="mlp.fc1", in_features=d, out_features=inter, bias=True),
        Linear(name="mlp.fc2", in_features=inter, out_features=d, bias=True),
    )
    return VisionSpec(
        kind="siglip",
        depth=integer(v, "num_hidden_layers", where, 1, MAX_LAYERS, prefix=pre),
        hidden_size=d,
        num_heads=integer(v, "num_attention_heads", where, 1, MAX_HEADS, prefix=pre),
        intermediate_size=inter,
        patch_size=patch,
        in_channels=integer(v, "num_channels", where, 1, MAX_CHANNELS, prefix=pre),
        out_hidden_size=lm_hidden,
        image_size=side,
        num_queries=tokens,
        patch_bias=True,
        pos_rows=grid * grid,
        post_norm=True,
        projector="pool",
        blocks=blocks,
    )


def read_multimodal(name: str, cfg: dict[str, Any], where: str) -> ModelSpec:
    """``Gemma3ForConditionalGeneration``: the text model read from ``text_config`` (the class
    defaults filling what it leaves out), embeddings tied to the LM head
    (``_tied_weights_keys``), and the SigLIP tower from ``vision_config``. Flash attention is
    refused (``_supports_flash_attn = False``: it would drop the bidirectional mask over image
    tokens); sdpa and eager are built."""
    text = cfg.get("text_config")
    vcfg = cfg.get("vision_config")
    if not isinstance(text, dict) or not isinstance(vcfg, dict):
        raise VramplanError(where, "a gemma3 config needs 'text_config' and 'vision_config' objects")
    lm = {**TEXT_DEFAULTS, **{k: v for k, v in text.items() if v is not None}, "model_type": "gemma3"}
    if cfg.get("tie_word_embeddings") is not None:
        lm["tie_word_embeddings"] = cfg["tie_word_embeddings"]
    if "torch_dtype" in cfg or "dtype" in cfg:
        lm.setdefault("torch_dtype", cfg.get("torch_dtype") or cfg.get("dtype"))
    spec = read(name, lm, where, attentions=("eager", "sdpa"), image_mask_every_layer=True)
    tokens = integer(cfg, "mm_tokens_per_image", where, 1, MAX_VISION_QUERIES, default=256)
    return spec.model_copy(update={"vision": siglip_tower(vcfg, spec.hidden_size, tokens, where)})


FAMILY = register(Family("gemma3_text", ("gemma3_text",), read, title="Gemma 3 (text)"))
MULTIMODAL = register(Family("gemma3", ("gemma3",), read_multimodal, title="Gemma 3 (multimodal)"))
