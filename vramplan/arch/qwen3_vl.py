"""Qwen3-VL, dense and MoE (transformers 5.25 ``models/qwen3_vl/modeling_qwen3_vl.py`` and
``models/qwen3_vl_moe/modeling_qwen3_vl_moe.py``, model types ``qwen3_vl`` and ``qwen3_vl_moe``;
built without remote code).

The language model (``text_config``) is Qwen3's: q/k/v/o without bias (``attention_bias``), a
per-head RMSNorm on q and k (``Qwen3VLTextAttention.q_norm``/``k_norm``, ``head_dim`` wide), two
RMSNorms per layer, a gated SiLU MLP (``Qwen3VLTextMLP``) or, in ``qwen3_vl_moe``, the
``Qwen3VLMoeTextSparseMoeBlock`` of Qwen3-MoE: a router weight (``Qwen3VLMoeTextTopKRouter``)
and the experts as two fused parameters (``Qwen3VLMoeTextExperts.gate_up_proj`` E x 2I x h,
``down_proj`` E x h x I). Rotary positions are interleaved MRoPE (``mrope_section`` over t/h/w):
cos and sin only, nothing trainable. Whether ``lm_head`` shares the embedding is the top-level
``tie_word_embeddings`` (``Qwen3VLConfig`` default False); a ``text_config`` value is not read
(tried on the meta device: a text_config True under a top-level False builds an untied head).

The vision tower (``Qwen3VLVisionModel``): a Conv3d patch embedding *with* bias (temporal 2 x
16 x 16), a learned ``pos_embed`` table (``nn.Embedding(num_position_embeddings, d)``) bilinearly
interpolated to each image's grid, ``depth`` blocks of LayerNorm + qkv/proj (with bias) + an MLP
``linear_fc1``/``linear_fc2`` (with bias, GELU-tanh), the patch merger (LayerNorm(d), 4d -> 4d
-> out) and DeepStack: after each block in ``deepstack_visual_indexes`` a further merger
(``use_postshuffle_norm``: LayerNorm over 4d) turns that block's output into LM-width features
that ``Qwen3VLTextModel._deepstack_process`` adds to the hidden states of the image tokens after
decoder layers 0, 1, 2, ... (one per merger). Full attention within each image (``cu_seqlens``
per image), no windows.

The image processor (Qwen2-VL's, ``Qwen2VLImageProcessor``) resizes with ``smart_resize`` to a
multiple of patch x merge = 32 within the released ``preprocessor_config.json``'s
``size = {shortest_edge: 65536, longest_edge: 16777216}`` pixels (:data:`MIN_PIXELS`,
:data:`MAX_PIXELS`). Videos go through ``Qwen3VLVideoProcessor`` (timestamps between frames,
its own pixel budget), which the planner does not model: the reader declares images only.
"""

from __future__ import annotations

from typing import Any

from vramplan.arch import moe
from vramplan.arch.config import flag, indexes, integer
from vramplan.arch.decoder import llama_like
from vramplan.arch.registry import Family, register
from vramplan.errors import VramplanError
from vramplan.limits import (
    MAX_CHANNELS,
    MAX_HEADS,
    MAX_HIDDEN,
    MAX_INTERMEDIATE,
    MAX_LAYERS,
    MAX_PATCH,
    MAX_POSITIONS,
)
from vramplan.spec import Linear, ModelSpec, VisionSpec

#: the released image processor's pixel bounds (Qwen/Qwen3-VL-8B-Instruct preprocessor_config.json
#: ``size``: ``{"longest_edge": 16777216, "shortest_edge": 65536}``, tables/models/qwen3-vl-8b)
MIN_PIXELS = 65536
MAX_PIXELS = 16777216

#: the model types read here; ``decoder_layer`` stays empty, as for Qwen2-VL: FSDP would wrap the
#: vision blocks too (``_no_split_modules = ["Qwen3VLTextDecoderLayer", "Qwen3VLVisionBlock"]``)
MODEL_TYPES = ("qwen3_vl", "qwen3_vl_moe")


def _vision(v: dict[str, Any], lm_hidden: int, where: str) -> VisionSpec:
    """``Qwen3VLVisionModel.__init__``'s modules (see the module docstring)."""
    pre = "vision_config."
    d = integer(v, "hidden_size", where, 1, MAX_HIDDEN, default=1152, prefix=pre)
    inter = integer(v, "intermediate_size", where, 1, MAX_INTERMEDIATE, default=4304, prefix=pre)
    depth = integer(v, "depth", where, 1, MAX_LAYERS, default=27, prefix=pre)
    deepstack = (
        indexes(v, "deepstack_visual_indexes", where, depth, prefix=pre)
        if "deepstack_visual_indexes" in v
        else tuple(i for i in (8, 16, 24) if i < depth)
    )
    return VisionSpec(
        kind="qwen3-vl",
        depth=depth,
        hidden_size=d,
        num_heads=integer(v, "num_heads", where, 1, MAX_HEADS, default=16, prefix=pre),
        intermediate_size=inter,
        patch_size=integer(v, "patch_size", where, 1, MAX_PATCH, default=16, prefix=pre),
        in_channels=integer(v, "in_channels", where, 1, MAX_CHANNELS, default=3, prefix=pre),
        temporal_patch_size=integer(v, "temporal_patch_size", where, 1, MAX_PATCH, default=2, prefix=pre),
        spatial_merge_size=integer(v, "spatial_merge_size", where, 1, MAX_PATCH, default=2, prefix=pre),
        norm="layernorm",
        out_hidden_size=integer(v, "out_hidden_size", where, 1, MAX_HIDDEN, default=lm_hidden, prefix=pre),
        patch_bias=True,
        pos_embed_rows=integer(v, "num_position_embeddings", where, 1, MAX_POSITIONS, default=2304, prefix=pre),
        deepstack_layers=deepstack,
        min_pixels=MIN_PIXELS,
        max_pixels=MAX_PIXELS,
        # traced on Qwen3-VL-2B, full fine-tuning without checkpointing (tests/test_qwen3_vl.py)
        block_saved_hidden=11,
        merger_saved_hidden=4 + 3 * len(deepstack),
        input_embeds_hooked=False,
        blocks=(
            Linear(name="attn.qkv", in_features=d, out_features=3 * d, bias=True),
            Linear(name="attn.proj", in_features=d, out_features=d, bias=True),
            Linear(name="mlp.linear_fc1", in_features=d, out_features=inter, bias=True),
            Linear(name="mlp.linear_fc2", in_features=inter, out_features=d, bias=True),
        ),
    )


def restack(spec: ModelSpec, major: int) -> ModelSpec:
    """``spec`` (transformers 5, as :func:`read` gives it) as transformers ``major`` builds it.
    Qwen3-VL-MoE's experts are fused parameters in both: transformers 4.57's
    ``Qwen3VLMoeTextExperts`` holds ``gate_up_proj`` (E x h x 2I) and ``down_proj`` (E x I x h)
    as ``nn.Parameter`` (the released checkpoints store them so), beside a router that is an
    ``nn.Linear`` (``Qwen3VLMoeTextSparseMoeBlock.gate = nn.Linear(hidden, num_experts,
    bias=False)``; read in copies of 4.57's ``modular_qwen3_vl_moe.py``), which bitsandbytes
    quantizes and PEFT's ``all-linear`` adapts; transformers 5 makes the router a bare weight
    (``Qwen3VLMoeTextTopKRouter``)."""
    if spec.moe is None:
        return spec
    fused = moe._fused(spec.hidden_size, spec.moe.num_experts, spec.moe.expert_intermediate_size)
    if major == 5:
        return spec.model_copy(update={"moe_mlp": fused, "transformers": 5})
    router = Linear(name="gate", in_features=spec.hidden_size, out_features=spec.moe.num_experts)
    return spec.model_copy(update={"moe_mlp": (router, *fused[1:]), "transformers": 4})


def read(name: str, cfg: dict[str, Any], where: str) -> ModelSpec:
    """A Qwen3 language model from ``text_config`` (flat keys accepted) and the vision tower."""
    mt = cfg["model_type"]
    text = cfg.get("text_config")
    lm = {k: v for k, v in cfg.items() if k not in ("text_config", "vision_config")}
    if isinstance(text, dict):
        lm.update({k: v for k, v in text.items() if v is not None})
    lm["model_type"] = mt
    # the top-level flag ties lm_head (Qwen3VLConfig.tie_word_embeddings, default False)
    lm["tie_word_embeddings"] = flag(cfg, "tie_word_embeddings", where, False)
    vcfg = cfg.get("vision_config")
    if not isinstance(vcfg, dict):
        raise VramplanError(where, "config.json has no 'vision_config'; a VL config needs it")
    spec = llama_like(
        name,
        lm,
        where,
        qkv_bias=flag(lm, "attention_bias", where, False),
        o_bias=flag(lm, "attention_bias", where, False),
        moe=moe._experts if mt == "qwen3_vl_moe" else None,
        qk_norm=True,
        chat_templates=(("llamafactory", "qwen3_vl"),),
    )
    update: dict[str, Any] = {"vision": _vision(vcfg, spec.hidden_size, where)}
    if mt == "qwen3_vl_moe":
        update["transformers"] = 5
    return spec.model_copy(update=update)


FAMILY = register(Family("qwen3_vl", MODEL_TYPES, read, title="Qwen3-VL", restack=restack))
