"""Qwen2-VL and Qwen2.5-VL (transformers ``models/qwen2_vl``, ``models/qwen2_5_vl``): a Qwen2
language model and a vision tower with a patch merger."""

from __future__ import annotations

from typing import Any

from vramplan.arch.config import indexes, integer, number, text
from vramplan.arch.decoder import llama_like
from vramplan.arch.registry import Family, register
from vramplan.errors import VramplanError
from vramplan.limits import (
    MAX_CHANNELS,
    MAX_HEADS,
    MAX_HIDDEN,
    MAX_IMAGE_SIDE,
    MAX_INTERMEDIATE,
    MAX_LAYERS,
    MAX_MLP_RATIO,
    MAX_PATCH,
)
from vramplan.spec import Linear, ModelSpec, VisionSpec

#: the vision tower kind of each model type
KINDS = {"qwen2_vl": "qwen2-vl", "qwen2_5_vl": "qwen2.5-vl"}


def _vision(v: dict[str, Any], lm_hidden: int, kind: str, where: str) -> VisionSpec:
    """Qwen2-VL / Qwen2.5-VL vision tower (transformers ``Qwen2VisionTransformerPretrainedModel``):
    Conv3d patch embed without bias, blocks of qkv/proj (with bias) and an MLP (fc1/fc2 in
    Qwen2-VL; gated gate/up/down with bias in Qwen2.5-VL), and the PatchMerger."""
    pre = "vision_config."
    d = integer(v, "embed_dim" if kind == "qwen2-vl" else "hidden_size", where, 1, MAX_HIDDEN, prefix=pre)
    if kind == "qwen2-vl":
        inter = max(1, int(d * number(v, "mlp_ratio", where, MAX_MLP_RATIO, default=4, prefix=pre)))
        blocks: tuple[Linear, ...] = (
            Linear(name="attn.qkv", in_features=d, out_features=3 * d, bias=True),
            Linear(name="attn.proj", in_features=d, out_features=d, bias=True),
            Linear(name="mlp.fc1", in_features=d, out_features=inter, bias=True),
            Linear(name="mlp.fc2", in_features=inter, out_features=d, bias=True),
        )
        out = integer(v, "hidden_size", where, 1, MAX_HIDDEN, default=lm_hidden, prefix=pre)
    else:
        inter = integer(v, "intermediate_size", where, 1, MAX_INTERMEDIATE, prefix=pre)
        blocks = (
            Linear(name="attn.qkv", in_features=d, out_features=3 * d, bias=True),
            Linear(name="attn.proj", in_features=d, out_features=d, bias=True),
            Linear(name="mlp.gate_proj", in_features=d, out_features=inter, bias=True),
            Linear(name="mlp.up_proj", in_features=d, out_features=inter, bias=True),
            Linear(name="mlp.down_proj", in_features=inter, out_features=d, bias=True),
        )
        out = integer(v, "out_hidden_size", where, 1, MAX_HIDDEN, default=lm_hidden, prefix=pre)
    depth = integer(v, "depth", where, 1, MAX_LAYERS, prefix=pre)
    chans = "in_channels" if v.get("in_channels") is not None else "in_chans"
    return VisionSpec(
        kind=kind,  # type: ignore[arg-type]
        depth=depth,
        hidden_size=d,
        num_heads=integer(v, "num_heads", where, 1, MAX_HEADS, prefix=pre),
        intermediate_size=inter,
        patch_size=integer(v, "patch_size", where, 1, MAX_PATCH, default=14, prefix=pre),
        in_channels=integer(v, chans, where, 1, MAX_CHANNELS, default=3, prefix=pre),
        temporal_patch_size=integer(v, "temporal_patch_size", where, 1, MAX_PATCH, default=2, prefix=pre),
        spatial_merge_size=integer(v, "spatial_merge_size", where, 1, MAX_PATCH, default=2, prefix=pre),
        gated_mlp=kind == "qwen2.5-vl",
        # traced full fine-tuning without checkpointing at 980x980 (tests/test_qwen2_vl_tower.py). Qwen2-VL:
        # per block the 11 n x d tensors Qwen3-VL's keeps, and quick_gelu's three n x I
        # (configuration_qwen2_vl.py ``hidden_act`` "quick_gelu" by default). Qwen2.5-VL: its RMSNorms
        # keep 4 each (the fp32 input, the normalized 16-bit cast and the weight's product, counted
        # in 16-bit units) besides qkv's 3, the rotated q and k, the rotary cat and the attention output: 15
        block_saved_hidden=11 if kind == "qwen2-vl" else 15,
        mlp_saved=3 if kind == "qwen2-vl" and text(v, ("hidden_act",), where, "quick_gelu") == "quick_gelu" else 0,
        norm="layernorm" if kind == "qwen2-vl" else "rmsnorm",
        out_hidden_size=out,
        window_size=integer(v, "window_size", where, 0, MAX_IMAGE_SIDE, default=0, prefix=pre),
        fullatt_block_indexes=indexes(v, "fullatt_block_indexes", where, depth, prefix=pre),
        videos=True,
        blocks=blocks,
    )


def read(name: str, cfg: dict[str, Any], where: str) -> ModelSpec:
    """Qwen2-VL / Qwen2.5-VL: a Qwen2 language model (flat keys, or ``text_config``)."""
    lm = dict(cfg)
    if isinstance(cfg.get("text_config"), dict):
        lm.update({k: v for k, v in cfg["text_config"].items() if v is not None})
    lm["model_type"] = cfg["model_type"]
    spec = llama_like(name, lm, where, qkv_bias=True, o_bias=False, chat_templates=(("llamafactory", "qwen2_vl"),))
    vcfg = cfg.get("vision_config")
    if not isinstance(vcfg, dict):
        raise VramplanError(where, "config.json has no 'vision_config'; a VL config needs it")
    vision = _vision(vcfg, spec.hidden_size, KINDS[cfg["model_type"]], where)
    return spec.model_copy(update={"vision": vision})


FAMILY = register(Family("qwen2_vl", tuple(KINDS), read))
