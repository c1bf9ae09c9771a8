"""ModelSpec: the architecture facts the memory model needs, read from a config.json.

No transformers import: the config is plain JSON and each supported ``model_type`` is
read by a small function below that mirrors the module layout of its modeling file
(transformers ``models/<type>/modeling_<type>.py``, or the publisher's remote-code
``modeling_qwen.py`` / ``visual.py`` for Qwen (v1) and Qwen-VL, read, never run).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from vramplan.errors import VramplanError, shown
from vramplan.limits import (
    MAX_CHANNELS,
    MAX_EXPERTS,
    MAX_HEAD_DIM,
    MAX_HEADS,
    MAX_HIDDEN,
    MAX_IMAGE_SIDE,
    MAX_INTERMEDIATE,
    MAX_LAYERS,
    MAX_MLP_RATIO,
    MAX_PATCH,
    MAX_POSITIONS,
    MAX_SOFTCAP,
    MAX_VISION_QUERIES,
    MAX_VOCAB,
    said,
)

Frozen = ConfigDict(frozen=True, extra="forbid")


class Linear(BaseModel):
    """One linear map inside a block: ``count`` copies of ``out x in`` (+ bias).

    ``nn_linear`` is False for weights that are not ``torch.nn.Linear`` modules in the
    real model (fused MoE expert tensors, routers): PEFT's ``all-linear`` and
    bitsandbytes' quantization skip those.
    """

    model_config = Frozen
    name: str
    in_features: int
    out_features: int
    bias: bool = False
    count: int = 1
    nn_linear: bool = True

    @property
    def weight_params(self) -> int:
        return self.count * self.in_features * self.out_features

    @property
    def bias_params(self) -> int:
        return self.count * self.out_features if self.bias else 0

    @property
    def params(self) -> int:
        return self.weight_params + self.bias_params


class MoESpec(BaseModel):
    """Mixture-of-experts facts: all experts hold memory, ``experts_per_token`` compute."""

    model_config = Frozen
    num_experts: int
    experts_per_token: int
    expert_intermediate_size: int
    shared_expert_intermediate_size: int = 0
    layers: tuple[int, ...]


class VisionSpec(BaseModel):
    """A VLM's vision tower (and, separately counted, its projector to the LM)."""

    model_config = Frozen
    kind: Literal["qwen2-vl", "qwen2.5-vl", "qwen-vl"]
    depth: int
    hidden_size: int
    num_heads: int
    intermediate_size: int
    patch_size: int
    in_channels: int = 3
    temporal_patch_size: int = 1
    spatial_merge_size: int = 1
    gated_mlp: bool = False
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    out_hidden_size: int
    window_size: int = 0
    fullatt_block_indexes: tuple[int, ...] = ()
    image_size: int = 0  # fixed input resolution (Qwen-VL: 448); 0 = dynamic
    num_queries: int = 0  # resampler query tokens (Qwen-VL: 256); 0 = patch merger
    blocks: tuple[Linear, ...]


class ModelSpec(BaseModel):
    """Architecture facts of one model, exact enough to count every parameter."""

    model_config = Frozen
    name: str
    model_type: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    tie_word_embeddings: bool
    hidden_act: str
    gated_mlp: bool
    norm: Literal["rmsnorm", "layernorm"] = "rmsnorm"
    norms_per_layer: int = 2
    qk_norm: bool = False
    attention: tuple[Linear, ...]
    mlp: tuple[Linear, ...]
    moe: MoESpec | None = None
    moe_mlp: tuple[Linear, ...] = ()
    vision: VisionSpec | None = None
    max_position_embeddings: int = 0
    final_logit_softcapping: float | None = None
    attn_logit_softcapping: float | None = None
    embedding_name: str = "embed_tokens"
    torch_dtype: str = "bfloat16"
    #: attention implementations transformers builds this family with (Setup.attention names)
    attentions: tuple[str, ...] = ("eager", "sdpa", "flash-attn-2")

    @property
    def q_dim(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim

    def __hash__(self) -> int:  # frozen: hash once (specs key the term caches)
        cached = self.__dict__.get("_hash_value")
        if cached is None:
            cached = hash(tuple((k, v) for k, v in self.__dict__.items() if k != "_hash_value"))
            self.__dict__["_hash_value"] = cached
        return cached

    @property
    def layer_groups(self) -> tuple[tuple[tuple[Linear, ...], int], ...]:
        """(linears of a decoder layer, number of layers built so): dense and MoE layers."""
        n_moe = len(self.moe.layers) if self.moe is not None else 0
        groups = ((self.attention + self.mlp, self.num_layers - n_moe), (self.attention + self.moe_mlp, n_moe))
        return tuple(g for g in groups if g[1])

    def layer_mlp(self, layer: int) -> tuple[Linear, ...]:
        """The MLP linears of decoder layer ``layer`` (experts on MoE layers)."""
        if self.moe is not None and layer in self.moe.layers:
            return self.moe_mlp
        return self.mlp

    def layer_linears(self, layer: int) -> tuple[Linear, ...]:
        return self.attention + self.layer_mlp(layer)

    def linear_names(self) -> list[str]:
        """Names of the ``nn.Linear`` modules a LoRA can target (language model)."""
        names: list[str] = []
        for lin in self.attention + self.mlp + self.moe_mlp:
            if lin.nn_linear and lin.name not in names:
                names.append(lin.name)
        return names


#: model types whose transformers config class defaults ``tie_word_embeddings`` to True.
TIED_BY_DEFAULT = ("gemma2",)
#: transformers 5 refuses sdpa for Gemma-2: ``Gemma2PreTrainedModel._supports_sdpa = False``
#: ("sdpa does not support softcapping", models/gemma2/modeling_gemma2.py), which
#: ``PreTrainedModel._sdpa_can_dispatch`` (modeling_utils.py) turns into a ValueError when sdpa
#: is asked for; ``sdpa_attention_forward`` (integrations/sdpa_attention.py) refuses ``softcap``.
GEMMA2_ATTENTIONS = ("eager", "flash-attn-2")


def _get(cfg: dict[str, Any], key: str, *, where: str, default: Any = ..., prefix: str = "") -> Any:
    if key in cfg and cfg[key] is not None:
        return cfg[key]
    if default is ...:
        mt = cfg.get("model_type")
        needs = f"; a {mt} config needs it" if isinstance(mt, str) else ""
        raise VramplanError(f"{prefix}{key}", f"missing from {where}{needs}")
    return default


def _bounded(value: Any, key: str, where: str, lo: int, hi: int) -> int:
    """``value`` as an integer from ``lo`` to ``hi`` (an integral float such as 4096.0 passes;
    a bool, a string, NaN, a list or anything out of range raises naming ``key`` and the range)."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise VramplanError(key, f"must be an integer from {lo:,} to {hi:,}, got {shown(value)} ({where})")
    return value


def _int(cfg: dict[str, Any], key: str, where: str, lo: int, hi: int, *, default: Any = ..., prefix: str = "") -> int:
    """``cfg[key]`` checked by :func:`_bounded` (``default`` when absent or null)."""
    return _bounded(_get(cfg, key, where=where, default=default, prefix=prefix), f"{prefix}{key}", where, lo, hi)


def _number(cfg: dict[str, Any], key: str, where: str, hi: float, *, default: Any = ..., prefix: str = "") -> Any:
    """``cfg[key]`` as a finite number from 0 to ``hi`` (JSON's NaN and Infinity refused)."""
    value = _get(cfg, key, where=where, default=default, prefix=prefix)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= hi:
        raise VramplanError(f"{prefix}{key}", f"must be a number from 0 to {said(hi)}, got {shown(value)} ({where})")
    return value


def _flag(cfg: dict[str, Any], key: str, where: str, default: bool) -> bool:
    """``cfg[key]`` as a bool (true/false, or 0/1; absent or null: ``default``)."""
    value = cfg.get(key)
    if value is None:
        return default
    if not isinstance(value, int) or value not in (0, 1):
        raise VramplanError(key, f"must be true or false, got {shown(value)} ({where})")
    return bool(value)


def _text(cfg: dict[str, Any], keys: tuple[str, ...], where: str, default: str) -> str:
    """The first of ``keys`` present and not null, as a string."""
    for key in keys:
        value = cfg.get(key)
        if value is not None:
            if not isinstance(value, str) or len(value) > 100:
                raise VramplanError(key, f"must be a short string, got {shown(value)} ({where})")
            return value
    return default


def _indexes(cfg: dict[str, Any], key: str, where: str, below: int, prefix: str = "") -> tuple[int, ...]:
    """``cfg[key]``: a list of layer indexes, each from 0 to ``below - 1`` (absent or null: none)."""
    value = cfg.get(key)
    if value is None:
        return ()
    if not isinstance(value, list):
        raise VramplanError(f"{prefix}{key}", f"must be a list of layer indexes, got {shown(value)} ({where})")
    return tuple(_bounded(i, f"{prefix}{key}", where, 0, below - 1) for i in value)


def _decoder_linears(
    h: int,
    q_dim: int,
    kv_dim: int,
    inter: int,
    *,
    qkv_bias: bool,
    o_bias: bool,
    mlp_bias: bool,
    fused_qkv: bool = False,
    fused_gate_up: bool = False,
) -> tuple[tuple[Linear, ...], tuple[Linear, ...]]:
    """Llama-family block: q/k/v/o projections and a gated MLP (transformers' LlamaAttention,
    LlamaMLP; Phi-3 fuses qkv_proj and gate_up_proj)."""
    attn: tuple[Linear, ...]
    mlp: tuple[Linear, ...]
    if fused_qkv:
        attn = (
            Linear(name="qkv_proj", in_features=h, out_features=q_dim + 2 * kv_dim, bias=qkv_bias),
            Linear(name="o_proj", in_features=q_dim, out_features=h, bias=o_bias),
        )
    else:
        attn = (
            Linear(name="q_proj", in_features=h, out_features=q_dim, bias=qkv_bias),
            Linear(name="k_proj", in_features=h, out_features=kv_dim, bias=qkv_bias),
            Linear(name="v_proj", in_features=h, out_features=kv_dim, bias=qkv_bias),
            Linear(name="o_proj", in_features=q_dim, out_features=h, bias=o_bias),
        )
    if fused_gate_up:
        mlp = (
            Linear(name="gate_up_proj", in_features=h, out_features=2 * inter, bias=mlp_bias),
            Linear(name="down_proj", in_features=inter, out_features=h, bias=mlp_bias),
        )
    else:
        mlp = (
            Linear(name="gate_proj", in_features=h, out_features=inter, bias=mlp_bias),
            Linear(name="up_proj", in_features=h, out_features=inter, bias=mlp_bias),
            Linear(name="down_proj", in_features=inter, out_features=h, bias=mlp_bias),
        )
    return attn, mlp


def _common(cfg: dict[str, Any], where: str) -> dict[str, Any]:
    h = _int(cfg, "hidden_size", where, 1, MAX_HIDDEN)
    heads = _int(cfg, "num_attention_heads", where, 1, MAX_HEADS)
    kv = _int(cfg, "num_key_value_heads", where, 1, MAX_HEADS, default=heads)
    head_dim = _int(cfg, "head_dim", where, 1, MAX_HEAD_DIM, default=h // heads)
    if heads % kv:
        raise VramplanError(
            "num_key_value_heads", f"num_attention_heads ({heads}) must be a multiple of it, got {kv} ({where})"
        )
    return dict(
        hidden_size=h,
        num_layers=_int(cfg, "num_hidden_layers", where, 1, MAX_LAYERS),
        num_heads=heads,
        num_kv_heads=kv,
        head_dim=head_dim,
        intermediate_size=_int(cfg, "intermediate_size", where, 1, MAX_INTERMEDIATE),
        vocab_size=_int(cfg, "vocab_size", where, 1, MAX_VOCAB),
        tie_word_embeddings=_flag(cfg, "tie_word_embeddings", where, cfg.get("model_type") in TIED_BY_DEFAULT),
        hidden_act=_text(cfg, ("hidden_act", "hidden_activation"), where, "silu"),
        max_position_embeddings=_int(cfg, "max_position_embeddings", where, 0, MAX_POSITIONS, default=0),
        torch_dtype=_text(cfg, ("torch_dtype", "dtype"), where, "bfloat16"),
    )


def _llama_like(name: str, cfg: dict[str, Any], where: str) -> ModelSpec:
    """llama, mistral, mixtral, qwen2, qwen3, qwen3_moe, gemma2, phi3 (and their -VL text halves)."""
    mt = cfg["model_type"]
    c = _common(cfg, where)
    if mt in ("qwen2", "qwen2_vl", "qwen2_5_vl"):
        qkv_bias, o_bias = True, False  # Qwen2Attention: bias on q/k/v only
    elif mt == "phi3":
        qkv_bias = o_bias = False
    else:
        qkv_bias = o_bias = _flag(cfg, "attention_bias", where, False)
    attn, mlp = _decoder_linears(
        c["hidden_size"],
        c["num_heads"] * c["head_dim"],
        c["num_kv_heads"] * c["head_dim"],
        c["intermediate_size"],
        qkv_bias=qkv_bias,
        o_bias=o_bias,
        mlp_bias=_flag(cfg, "mlp_bias", where, False),
        fused_qkv=mt == "phi3",
        fused_gate_up=mt == "phi3",
    )
    moe = None
    moe_mlp: tuple[Linear, ...] = ()
    if mt in ("qwen3_moe", "mixtral"):
        if mt == "mixtral":  # every layer sparse; experts as wide as intermediate_size
            n_exp = _int(cfg, "num_local_experts", where, 1, MAX_EXPERTS)
            e_inter = c["intermediate_size"]
            layers = tuple(range(c["num_layers"]))
        else:
            # transformers 5 saves Qwen3-MoE's expert count as num_local_experts (its attribute map)
            key = "num_experts" if "num_experts" in cfg or "num_local_experts" not in cfg else "num_local_experts"
            n_exp = _int(cfg, key, where, 1, MAX_EXPERTS)
            e_inter = _int(cfg, "moe_intermediate_size", where, 1, MAX_INTERMEDIATE)
            step = _int(cfg, "decoder_sparse_step", where, 0, MAX_LAYERS, default=1) or 1
            dense_only = set(_indexes(cfg, "mlp_only_layers", where, MAX_LAYERS))
            layers = tuple(i for i in range(c["num_layers"]) if i not in dense_only and (i + 1) % step == 0)
        moe = MoESpec(
            num_experts=n_exp,
            experts_per_token=_int(cfg, "num_experts_per_tok", where, 1, n_exp),
            expert_intermediate_size=e_inter,
            layers=layers,
        )
        h = c["hidden_size"]
        # transformers 5 Qwen3MoeExperts / MixtralExperts: fused nn.Parameter tensors, and a
        # router weight (Qwen3MoeTopKRouter / MixtralTopKRouter).
        moe_mlp = (
            Linear(name="gate", in_features=h, out_features=n_exp, nn_linear=False),
            Linear(name="experts.gate_up_proj", in_features=h, out_features=2 * e_inter, count=n_exp, nn_linear=False),
            Linear(name="experts.down_proj", in_features=e_inter, out_features=h, count=n_exp, nn_linear=False),
        )
    return ModelSpec(
        name=name,
        model_type=mt,
        gated_mlp=True,
        norms_per_layer=4 if mt == "gemma2" else 2,
        qk_norm=mt in ("qwen3", "qwen3_moe"),
        attention=attn,
        mlp=mlp,
        moe=moe,
        moe_mlp=moe_mlp,
        final_logit_softcapping=_number(cfg, "final_logit_softcapping", where, MAX_SOFTCAP, default=None),
        attn_logit_softcapping=_number(cfg, "attn_logit_softcapping", where, MAX_SOFTCAP, default=None)
        if mt == "gemma2"
        else None,
        attentions=GEMMA2_ATTENTIONS if mt == "gemma2" else ModelSpec.model_fields["attentions"].default,
        **c,
    )


def _qwen1(name: str, cfg: dict[str, Any], where: str) -> ModelSpec:
    """Qwen (v1), remote code ``modeling_qwen.py``: fused ``c_attn`` (with bias), ``c_proj``,
    MLP ``w1``/``w2`` of width ``intermediate_size // 2`` and ``mlp.c_proj``; RMSNorm
    ``ln_1``/``ln_2``/``ln_f``; ``wte`` and an untied ``lm_head``."""
    h = _int(cfg, "hidden_size", where, 1, MAX_HIDDEN)
    heads = _int(cfg, "num_attention_heads", where, 1, MAX_HEADS)
    kv_channels = _int(cfg, "kv_channels", where, 1, MAX_HEAD_DIM, default=h // heads)
    ff = _int(cfg, "intermediate_size", where, 2, MAX_INTERMEDIATE) // 2
    proj = heads * kv_channels
    bias = not _flag(cfg, "no_bias", where, True)
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
        num_layers=_int(cfg, "num_hidden_layers", where, 1, MAX_LAYERS),
        num_heads=heads,
        num_kv_heads=heads,
        head_dim=kv_channels,
        intermediate_size=ff,
        vocab_size=_int(cfg, "vocab_size", where, 1, MAX_VOCAB),
        tie_word_embeddings=_flag(cfg, "tie_word_embeddings", where, False),
        hidden_act="silu",
        gated_mlp=True,
        attention=attn,
        mlp=mlp,
        vision=vision,
        max_position_embeddings=_int(
            cfg,
            "seq_length",
            where,
            0,
            MAX_POSITIONS,
            default=_int(cfg, "max_position_embeddings", where, 0, MAX_POSITIONS, default=0),
        ),
        embedding_name="wte",
        torch_dtype="bfloat16" if cfg.get("bf16") is True else _text(cfg, ("torch_dtype",), where, "bfloat16"),
    )


def _qwen_vl_visual(v: dict[str, Any], lm_hidden: int, where: str) -> VisionSpec:
    """Qwen-VL ``visual.py``: ViT (conv1, positional_embedding, ln_pre, resblocks with
    ``attn.in_proj``/``attn.out_proj`` and ``mlp.c_fc``/``mlp.c_proj``, ln_post, proj) and
    an attention-pool resampler to ``n_queries`` tokens of width ``output_dim``."""
    pre = "visual."
    width = _int(v, "width", where, 1, MAX_HIDDEN, prefix=pre)
    mlp_width = max(1, int(width * _number(v, "mlp_ratio", where, MAX_MLP_RATIO, prefix=pre)))
    patch = _int(v, "patch_size", where, 1, MAX_PATCH, prefix=pre)
    blocks = (
        Linear(name="attn.in_proj", in_features=width, out_features=3 * width, bias=True),
        Linear(name="attn.out_proj", in_features=width, out_features=width, bias=True),
        Linear(name="mlp.c_fc", in_features=width, out_features=mlp_width, bias=True),
        Linear(name="mlp.c_proj", in_features=mlp_width, out_features=width, bias=True),
    )
    return VisionSpec(
        kind="qwen-vl",
        depth=_int(v, "layers", where, 1, MAX_LAYERS, prefix=pre),
        hidden_size=width,
        num_heads=_int(v, "heads", where, 1, MAX_HEADS, prefix=pre),
        intermediate_size=mlp_width,
        patch_size=patch,
        out_hidden_size=_int(v, "output_dim", where, 1, MAX_HIDDEN, default=lm_hidden, prefix=pre),
        image_size=_int(v, "image_size", where, patch, MAX_IMAGE_SIDE, prefix=pre),
        num_queries=_int(v, "n_queries", where, 1, MAX_VISION_QUERIES, default=256, prefix=pre),
        blocks=blocks,
    )


def _qwen2_vl_vision(v: dict[str, Any], lm_hidden: int, kind: str, where: str) -> VisionSpec:
    """Qwen2-VL / Qwen2.5-VL vision tower (transformers ``Qwen2VisionTransformerPretrainedModel``):
    Conv3d patch embed without bias, blocks of qkv/proj (with bias) and an MLP (fc1/fc2 in
    Qwen2-VL; gated gate/up/down with bias in Qwen2.5-VL), and the PatchMerger."""
    pre = "vision_config."
    d = _int(v, "embed_dim" if kind == "qwen2-vl" else "hidden_size", where, 1, MAX_HIDDEN, prefix=pre)
    if kind == "qwen2-vl":
        inter = max(1, int(d * _number(v, "mlp_ratio", where, MAX_MLP_RATIO, default=4, prefix=pre)))
        blocks: tuple[Linear, ...] = (
            Linear(name="attn.qkv", in_features=d, out_features=3 * d, bias=True),
            Linear(name="attn.proj", in_features=d, out_features=d, bias=True),
            Linear(name="mlp.fc1", in_features=d, out_features=inter, bias=True),
            Linear(name="mlp.fc2", in_features=inter, out_features=d, bias=True),
        )
        out = _int(v, "hidden_size", where, 1, MAX_HIDDEN, default=lm_hidden, prefix=pre)
    else:
        inter = _int(v, "intermediate_size", where, 1, MAX_INTERMEDIATE, prefix=pre)
        blocks = (
            Linear(name="attn.qkv", in_features=d, out_features=3 * d, bias=True),
            Linear(name="attn.proj", in_features=d, out_features=d, bias=True),
            Linear(name="mlp.gate_proj", in_features=d, out_features=inter, bias=True),
            Linear(name="mlp.up_proj", in_features=d, out_features=inter, bias=True),
            Linear(name="mlp.down_proj", in_features=inter, out_features=d, bias=True),
        )
        out = _int(v, "out_hidden_size", where, 1, MAX_HIDDEN, default=lm_hidden, prefix=pre)
    depth = _int(v, "depth", where, 1, MAX_LAYERS, prefix=pre)
    chans = "in_channels" if v.get("in_channels") is not None else "in_chans"
    return VisionSpec(
        kind=kind,  # type: ignore[arg-type]
        depth=depth,
        hidden_size=d,
        num_heads=_int(v, "num_heads", where, 1, MAX_HEADS, prefix=pre),
        intermediate_size=inter,
        patch_size=_int(v, "patch_size", where, 1, MAX_PATCH, default=14, prefix=pre),
        in_channels=_int(v, chans, where, 1, MAX_CHANNELS, default=3, prefix=pre),
        temporal_patch_size=_int(v, "temporal_patch_size", where, 1, MAX_PATCH, default=2, prefix=pre),
        spatial_merge_size=_int(v, "spatial_merge_size", where, 1, MAX_PATCH, default=2, prefix=pre),
        gated_mlp=kind == "qwen2.5-vl",
        norm="layernorm" if kind == "qwen2-vl" else "rmsnorm",
        out_hidden_size=out,
        window_size=_int(v, "window_size", where, 0, MAX_IMAGE_SIDE, default=0, prefix=pre),
        fullatt_block_indexes=_indexes(v, "fullatt_block_indexes", where, depth, prefix=pre),
        blocks=blocks,
    )


def _qwen_vl2(name: str, cfg: dict[str, Any], where: str) -> ModelSpec:
    """Qwen2-VL / Qwen2.5-VL: a Qwen2 language model (flat keys, or ``text_config``)."""
    text = dict(cfg)
    if isinstance(cfg.get("text_config"), dict):
        text.update({k: v for k, v in cfg["text_config"].items() if v is not None})
    text["model_type"] = cfg["model_type"]
    spec = _llama_like(name, text, where)
    kind = "qwen2-vl" if cfg["model_type"] == "qwen2_vl" else "qwen2.5-vl"
    vcfg = cfg.get("vision_config")
    if not isinstance(vcfg, dict):
        raise VramplanError(where, "config.json has no 'vision_config'; a VL config needs it")
    vision = _qwen2_vl_vision(vcfg, spec.hidden_size, kind, where)
    return spec.model_copy(update={"vision": vision})


_READERS = {
    "llama": _llama_like,
    "mistral": _llama_like,
    "mixtral": _llama_like,
    "qwen2": _llama_like,
    "qwen3": _llama_like,
    "qwen3_moe": _llama_like,
    "gemma2": _llama_like,
    "phi3": _llama_like,
    "qwen": _qwen1,
    "qwen2_vl": _qwen_vl2,
    "qwen2_5_vl": _qwen_vl2,
}

SUPPORTED_MODEL_TYPES = tuple(sorted(_READERS))


def spec_from_config(config: dict[str, Any], name: str = "model", where: str = "config.json") -> ModelSpec:
    """Parse a config.json dict into a ModelSpec; bad or missing fields raise VramplanError."""
    if not isinstance(config, dict):
        raise VramplanError(where, "must be a JSON object")
    mt = config.get("model_type")
    if not isinstance(mt, str) or mt not in _READERS:
        raise VramplanError(
            "model_type", f"{shown(mt)} is not supported ({where}); supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    return _READERS[mt](name, config, where)
