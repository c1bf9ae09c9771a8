"""Exact parameter counts per group, from a ModelSpec alone.

Groups: ``embeddings``, ``attention`` (everything under a layer's attention module,
q/k norms included), ``mlp`` (dense MLP, or router + experts), ``norms`` (per-layer norms
and the final norm), ``lm_head`` (0 when tied), ``vision`` (tower), ``projector``
(Qwen2-VL PatchMerger / Qwen-VL resampler). Checked against transformers' own models
built on the meta device (tests/test_params_oracle.py).
"""

from __future__ import annotations

from functools import lru_cache

from pydantic import BaseModel, ConfigDict

from vramplan.spec import ModelSpec, VisionSpec


class ParamCounts(BaseModel):
    model_config = ConfigDict(frozen=True)
    embeddings: int
    attention: int
    mlp: int
    norms: int
    lm_head: int
    vision: int = 0
    projector: int = 0
    idle_experts: int = 0  # MoE: expert weights a token does not route through

    @property
    def active(self) -> int:
        """Parameters one token computes with: all of a dense model; for MoE, the total less
        the experts it is not routed to (top-k of E per MoE layer, shared experts included)."""
        return self.total - self.idle_experts

    @property
    def language_model(self) -> int:
        return self.embeddings + self.attention + self.mlp + self.norms + self.lm_head

    @property
    def total(self) -> int:
        return self.language_model + self.vision + self.projector


def _norm_params(width: int, kind: str) -> int:
    """RMSNorm has a weight; LayerNorm a weight and a bias."""
    return width * (2 if kind == "layernorm" else 1)


def vision_tower_params(v: VisionSpec) -> int:
    """Patch embedding + blocks (+ an absolute position table and ln_pre: Qwen-VL; SigLIP's patch
    bias, position table and post_layernorm; Pixtral's ln_pre; Qwen3-VL's position table and
    DeepStack mergers)."""
    d = v.hidden_size
    block = sum(lin.params for lin in v.blocks) + 2 * _norm_params(d, v.norm)
    patch = v.in_channels * v.temporal_patch_size * v.patch_size**2 * d  # Conv3d (Conv2d: one frame)
    patch += (d if v.patch_bias else 0) + v.pos_rows * d  # its bias (Qwen3-VL, SigLIP; Qwen2-VL's has none)
    patch += (_norm_params(d, v.norm) if v.post_norm else 0) + (_norm_params(d, v.norm) if v.pre_norm else 0)
    if v.pos_embed_rows:
        # Qwen3-VL: Conv3d with bias, pos_embed (rows x width), and per DeepStack layer a merger
        # over 4d: LayerNorm(4d) -> Linear(4d, 4d) -> GELU -> Linear(4d, out), with biases
        merged = d * v.spatial_merge_size**2
        deepstack = _norm_params(merged, "layernorm") + merged * merged + merged + merged * v.out_hidden_size
        deepstack += v.out_hidden_size
        return patch + v.pos_embed_rows * d + v.depth * block + len(v.deepstack_layers) * deepstack
    if v.abs_pos_rows:
        # Qwen-VL: positional_embedding is a fixed [256, width] table, interpolated to the patch
        # grid at run time (visual.py get_abs_pos); ln_pre(width).
        return patch + v.abs_pos_rows * d + _norm_params(d, "layernorm") + v.depth * block
    return patch + v.depth * block


def projector_params(v: VisionSpec) -> int:
    """Qwen2(.5)-VL PatchMerger: norm(d) -> Linear(4d, 4d) -> GELU -> Linear(4d, out).
    Qwen-VL Resampler: pos_embed and query (n_q x D), kv_proj (d -> D, no bias),
    MultiheadAttention(D) with in/out projections and biases, ln_q, ln_kv, and the
    tower's ln_post(D) and proj (D x D) after it."""
    if v.projector == "pool":  # Gemma 3: mm_soft_emb_norm (RMSNorm weight) and mm_input_projection_weight
        return v.hidden_size + v.hidden_size * v.out_hidden_size
    if v.projector == "merge_mlp":  # Mistral 3: norm, patch_merger.merging_layer, linear_1, linear_2
        d, out = v.hidden_size, v.out_hidden_size
        bias = 2 * out if v.projector_bias else 0
        return d + d * v.spatial_merge_size**2 * d + d * out + out * out + bias
    if v.num_queries:
        big = v.out_hidden_size
        mha = 3 * big * big + 3 * big + big * big + big
        return (
            2 * v.num_queries * big
            + v.hidden_size * big
            + mha
            + 2 * _norm_params(big, "layernorm")
            + _norm_params(big, "layernorm")
            + big * big
        )
    merged = v.hidden_size * v.spatial_merge_size**2
    return (
        _norm_params(v.hidden_size, v.norm) + merged * merged + merged + merged * v.out_hidden_size + v.out_hidden_size
    )


@lru_cache(maxsize=256)
def param_counts(spec: ModelSpec) -> ParamCounts:
    h, L = spec.hidden_size, spec.num_layers
    attention = sum(lin.params for lin in spec.attention) + sum(spec.qk_norm_shapes) + sum(spec.latent_norm_shapes)
    attention += sum(spec.sink_shapes)
    n_moe = len(spec.moe.layers) if spec.moe is not None else 0
    mlp = (L - n_moe) * sum(lin.params for lin in spec.mlp) + n_moe * sum(lin.params for lin in spec.moe_mlp)
    norm = _norm_params(h, spec.norm)
    embeddings = spec.vocab_size * h
    idle = 0
    if spec.moe is not None:
        e, k = spec.moe.num_experts, spec.moe.experts_per_token
        per_layer = sum(lin.params for lin in spec.moe_mlp if lin.count == e)  # the E routed experts
        idle = n_moe * per_layer * (e - k) // e
    return ParamCounts(
        embeddings=embeddings,
        attention=attention * L,
        mlp=mlp,
        norms=norm * (spec.norms_per_layer * L + 1),
        lm_head=0 if spec.tie_word_embeddings else spec.vocab_size * h,
        vision=vision_tower_params(spec.vision) if spec.vision else spec.tower_params,
        projector=projector_params(spec.vision) if spec.vision else spec.tower_projector_params,
        idle_experts=idle,
    )
