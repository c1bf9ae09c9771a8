"""Qwen (v1) and Qwen-VL: the publisher's remote code (``modeling_qwen.py``, ``visual.py``),
read, never run by vramplan. transformers ships neither, so a trace cannot build them; trl and
axolotl (emitted around transformers' own classes) refuse them, while ms-swift (model types
``qwen`` and ``qwen_vl``, swift/model/models/qwen.py) and LLaMA-Factory (``trust_remote_code``,
template ``qwen``; model/patcher.py ``patch_config`` handles model_type ``qwen``) are emitted
for them: the user's trainer runs the repository's code."""

from __future__ import annotations

from typing import Any

from vramplan.arch.config import flag, integer, number, text
from vramplan.arch.registry import Family, register
from vramplan.limits import (
    MAX_HEAD_DIM,
    MAX_HEADS,
    MAX_HIDDEN,
    MAX_IMAGE_SIDE,
    MAX_INTERMEDIATE,
    MAX_LAYERS,
    MAX_MLP_RATIO,
    MAX_PATCH,
    MAX_POSITIONS,
    MAX_VISION_QUERIES,
    MAX_VOCAB,
)
from vramplan.spec import Linear, ModelSpec, VisionSpec

#: visual.py: ``positional_embedding = nn.Parameter(scale * torch.randn(256, width))``.
POS_ROWS = 256


def read(name: str, cfg: dict[str, Any], where: str) -> ModelSpec:
    """Qwen (v1), remote code ``modeling_qwen.py``: fused ``c_attn`` (with bias), ``c_proj``,
    MLP ``w1``/``w2`` of width ``intermediate_size // 2`` and ``mlp.c_proj``; RMSNorm
    ``ln_1``/``ln_2``/``ln_f``; ``wte`` and an untied ``lm_head``."""
    h = integer(cfg, "hidden_size", where, 1, MAX_HIDDEN)
    heads = integer(cfg, "num_attention_heads", where, 1, MAX_HEADS)
    kv_channels = integer(cfg, "kv_channels", where, 1, MAX_HEAD_DIM, default=h // heads)
    ff = integer(cfg, "intermediate_size", where, 2, MAX_INTERMEDIATE) // 2
    proj = heads * kv_channels
    bias = not flag(cfg, "no_bias", where, True)
    attn = (
        Linear(name="c_attn", in_features=h, out_features=3 * proj, bias=True),
        Linear(name="attn.c_proj", in_features=proj, out_features=h, bias=bias),
    )
    mlp = (
        Linear(name="w1", in_features=h, out_features=ff, bias=bias),
        Linear(name="w2", in_features=h, out_features=ff, bias=bias),
        Linear(name="mlp.c_proj", in_features=ff, out_features=h, bias=bias),
    )
    vision = _qwen_vl_visual(cfg["visual"], h, where) if isinstance(cfg.get("visual"), dict) else None
    return ModelSpec(
        name=name,
        model_type="qwen",
        hidden_size=h,
        num_layers=integer(cfg, "num_hidden_layers", where, 1, MAX_LAYERS),
        num_heads=heads,
        num_kv_heads=heads,
        head_dim=kv_channels,
        intermediate_size=ff,
        vocab_size=integer(cfg, "vocab_size", where, 1, MAX_VOCAB),
        tie_word_embeddings=flag(cfg, "tie_word_embeddings", where, False),
        hidden_act="silu",
        gated_mlp=True,
        attention=attn,
        mlp=mlp,
        vision=vision,
        fused_qkv=True,
        # modeling_qwen.py (Qwen-7B-Chat, Qwen-VL-Chat) ``QWenLMHeadModel.forward``: ``shift_logits =
        # lm_logits[..., :-1, :].contiguous()``, ``CrossEntropyLoss()(shift_logits.view(-1, V), ...)``
        loss_without_upcast=True,
        remote_code=True,
        chat_templates=(("llamafactory", "qwen"),),
        # ms-swift 4.6 registers both under architectures ['QWenLMHeadModel'] (swift/model/models/qwen.py)
        trainer_model_types=(("swift", "qwen_vl" if vision is not None else "qwen"),),
        layer_module="transformer.h",
        max_position_embeddings=integer(
            cfg,
            "seq_length",
            where,
            0,
            MAX_POSITIONS,
            default=integer(cfg, "max_position_embeddings", where, 0, MAX_POSITIONS, default=0),
        ),
        embedding_name="wte",
        torch_dtype="bfloat16" if cfg.get("bf16") is True else text(cfg, ("torch_dtype",), where, "bfloat16"),
    )


def _qwen_vl_visual(v: dict[str, Any], lm_hidden: int, where: str) -> VisionSpec:
    """Qwen-VL ``visual.py``: ViT (conv1, positional_embedding, ln_pre, resblocks with
    ``attn.in_proj``/``attn.out_proj`` and ``mlp.c_fc``/``mlp.c_proj``, ln_post, proj) and
    an attention-pool resampler to ``n_queries`` tokens of width ``output_dim``."""
    pre = "visual."
    width = integer(v, "width", where, 1, MAX_HIDDEN, prefix=pre)
    mlp_width = max(1, int(width * number(v, "mlp_ratio", where, MAX_MLP_RATIO, prefix=pre)))
    patch = integer(v, "patch_size", where, 1, MAX_PATCH, prefix=pre)
    blocks = (
        Linear(name="attn.in_proj", in_features=width, out_features=3 * width, bias=True),
        Linear(name="attn.out_proj", in_features=width, out_features=width, bias=True),
        Linear(name="mlp.c_fc", in_features=width, out_features=mlp_width, bias=True),
        Linear(name="mlp.c_proj", in_features=mlp_width, out_features=width, bias=True),
    )
    return VisionSpec(
        kind="qwen-vl",
        depth=integer(v, "layers", where, 1, MAX_LAYERS, prefix=pre),
        hidden_size=width,
        num_heads=integer(v, "heads", where, 1, MAX_HEADS, prefix=pre),
        intermediate_size=mlp_width,
        patch_size=patch,
        out_hidden_size=integer(v, "output_dim", where, 1, MAX_HIDDEN, default=lm_hidden, prefix=pre),
        image_size=integer(v, "image_size", where, patch, MAX_IMAGE_SIDE, prefix=pre),
        num_queries=integer(v, "n_queries", where, 1, MAX_VISION_QUERIES, default=256, prefix=pre),
        abs_pos_rows=POS_ROWS,
        blocks=blocks,
    )


FAMILY = register(
    Family(
        "qwen",
        ("qwen",),
        read,
        remote_code="Qwen (v1) is a remote-code architecture transformers does not ship; trace qwen1.5-7b/14b "
        "(the same shapes in transformers' Qwen2 classes) instead",
        title="Qwen v1",
    )
)
