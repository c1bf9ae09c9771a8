"""ModelSpec: the architecture facts the memory model needs, read from a config.json.

No transformers import: the config is plain JSON and each supported ``model_type`` is
read by a small function below that mirrors the module layout of its modeling file
(transformers ``models/<type>/modeling_<type>.py``, or the publisher's remote-code
``modeling_qwen.py`` / ``visual.py`` for Qwen (v1) and Qwen-VL, read, never run).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from vramplan.errors import VramplanError

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


def _get(cfg: dict[str, Any], key: str, *, where: str, default: Any = ...) -> Any:
    if key in cfg and cfg[key] is not None:
        return cfg[key]
    if default is ...:
        raise VramplanError(where, f"config.json has no '{key}'; a {cfg.get('model_type')} config needs it")
    return default


def _positive(value: Any, key: str, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise VramplanError(where, f"'{key}' must be a positive integer, got {value!r}")
    return value


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
    h = _positive(_get(cfg, "hidden_size", where=where), "hidden_size", where)
    heads = _positive(_get(cfg, "num_attention_heads", where=where), "num_attention_heads", where)
    kv = _positive(_get(cfg, "num_key_value_heads", where=where, default=heads), "num_key_value_heads", where)
    head_dim = _positive(_get(cfg, "head_dim", where=where, default=h // heads), "head_dim", where)
    if heads % kv:
        raise VramplanError(where, f"num_attention_heads ({heads}) must be a multiple of num_key_value_heads ({kv})")
    return dict(
        hidden_size=h,
        num_layers=_positive(_get(cfg, "num_hidden_layers", where=where), "num_hidden_layers", where),
        num_heads=heads,
        num_kv_heads=kv,
        head_dim=head_dim,
        intermediate_size=_positive(_get(cfg, "intermediate_size", where=where), "intermediate_size", where),
        vocab_size=_positive(_get(cfg, "vocab_size", where=where), "vocab_size", where),
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", cfg.get("model_type") in TIED_BY_DEFAULT)),
        hidden_act=str(cfg.get("hidden_act", cfg.get("hidden_activation", "silu"))),
        max_position_embeddings=int(cfg.get("max_position_embeddings", 0) or 0),
        torch_dtype=str(cfg.get("torch_dtype", cfg.get("dtype", "bfloat16"))),
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
        qkv_bias = o_bias = bool(cfg.get("attention_bias", False))
    attn, mlp = _decoder_linears(
        c["hidden_size"],
        c["num_heads"] * c["head_dim"],
        c["num_kv_heads"] * c["head_dim"],
        c["intermediate_size"],
        qkv_bias=qkv_bias,
        o_bias=o_bias,
        mlp_bias=bool(cfg.get("mlp_bias", False)),
        fused_qkv=mt == "phi3",
        fused_gate_up=mt == "phi3",
    )
    moe = None
    moe_mlp: tuple[Linear, ...] = ()
    if mt in ("qwen3_moe", "mixtral"):
        if mt == "mixtral":  # every layer sparse; experts as wide as intermediate_size
            n_exp = _positive(_get(cfg, "num_local_experts", where=where), "num_local_experts", where)
            e_inter = c["intermediate_size"]
            layers = tuple(range(c["num_layers"]))
        else:
            # transformers 5 saves Qwen3-MoE's expert count as num_local_experts (its attribute map)
            key = "num_experts" if "num_experts" in cfg or "num_local_experts" not in cfg else "num_local_experts"
            n_exp = _positive(_get(cfg, key, where=where), key, where)
            e_inter = _positive(_get(cfg, "moe_intermediate_size", where=where), "moe_intermediate_size", where)
            step = int(cfg.get("decoder_sparse_step", 1) or 1)
            dense_only = set(cfg.get("mlp_only_layers") or [])
            layers = tuple(i for i in range(c["num_layers"]) if i not in dense_only and (i + 1) % step == 0)
        moe = MoESpec(
            num_experts=n_exp,
            experts_per_token=_positive(_get(cfg, "num_experts_per_tok", where=where), "num_experts_per_tok", where),
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
        final_logit_softcapping=cfg.get("final_logit_softcapping"),
        attn_logit_softcapping=cfg.get("attn_logit_softcapping") if mt == "gemma2" else None,
        attentions=GEMMA2_ATTENTIONS if mt == "gemma2" else ModelSpec.model_fields["attentions"].default,
        **c,
    )


def _qwen1(name: str, cfg: dict[str, Any], where: str) -> ModelSpec:
    """Qwen (v1), remote code ``modeling_qwen.py``: fused ``c_attn`` (with bias), ``c_proj``,
    MLP ``w1``/``w2`` of width ``intermediate_size // 2`` and ``mlp.c_proj``; RMSNorm
    ``ln_1``/``ln_2``/``ln_f``; ``wte`` and an untied ``lm_head``."""
    h = _positive(_get(cfg, "hidden_size", where=where), "hidden_size", where)
    heads = _positive(_get(cfg, "num_attention_heads", where=where), "num_attention_heads", where)
    kv_channels = _positive(_get(cfg, "kv_channels", where=where, default=h // heads), "kv_channels", where)
    ff = _positive(_get(cfg, "intermediate_size", where=where), "intermediate_size", where) // 2
    proj = heads * kv_channels
    bias = not bool(cfg.get("no_bias", True))
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
        num_layers=_positive(_get(cfg, "num_hidden_layers", where=where), "num_hidden_layers", where),
        num_heads=heads,
        num_kv_heads=heads,
        head_dim=kv_channels,
        intermediate_size=ff,
        vocab_size=_positive(_get(cfg, "vocab_size", where=where), "vocab_size", where),
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        hidden_act="silu",
        gated_mlp=True,
        attention=attn,
        mlp=mlp,
        vision=vision,
        max_position_embeddings=int(cfg.get("seq_length", cfg.get("max_position_embeddings", 0)) or 0),
        embedding_name="wte",
        torch_dtype="bfloat16" if cfg.get("bf16") else str(cfg.get("torch_dtype", "bfloat16")),
    )


def _qwen_vl_visual(v: dict[str, Any], lm_hidden: int, where: str) -> VisionSpec:
    """Qwen-VL ``visual.py``: ViT (conv1, positional_embedding, ln_pre, resblocks with
    ``attn.in_proj``/``attn.out_proj`` and ``mlp.c_fc``/``mlp.c_proj``, ln_post, proj) and
    an attention-pool resampler to ``n_queries`` tokens of width ``output_dim``."""
    w = "visual"
    width = _positive(_get(v, "width", where=f"{where}.{w}"), "width", where)
    mlp_width = int(width * float(_get(v, "mlp_ratio", where=f"{where}.{w}")))
    blocks = (
        Linear(name="attn.in_proj", in_features=width, out_features=3 * width, bias=True),
        Linear(name="attn.out_proj", in_features=width, out_features=width, bias=True),
        Linear(name="mlp.c_fc", in_features=width, out_features=mlp_width, bias=True),
        Linear(name="mlp.c_proj", in_features=mlp_width, out_features=width, bias=True),
    )
    return VisionSpec(
        kind="qwen-vl",
        depth=_positive(_get(v, "layers", where=f"{where}.{w}"), "layers", where),
        hidden_size=width,
        num_heads=_positive(_get(v, "heads", where=f"{where}.{w}"), "heads", where),
        intermediate_size=mlp_width,
        patch_size=_positive(_get(v, "patch_size", where=f"{where}.{w}"), "patch_size", where),
        out_hidden_size=int(_get(v, "output_dim", where=f"{where}.{w}", default=lm_hidden)),
        image_size=_positive(_get(v, "image_size", where=f"{where}.{w}"), "image_size", where),
        num_queries=int(_get(v, "n_queries", where=f"{where}.{w}", default=256)),
        blocks=blocks,
    )


def _qwen2_vl_vision(v: dict[str, Any], lm_hidden: int, kind: str, where: str) -> VisionSpec:
    """Qwen2-VL / Qwen2.5-VL vision tower (transformers ``Qwen2VisionTransformerPretrainedModel``):
    Conv3d patch embed without bias, blocks of qkv/proj (with bias) and an MLP (fc1/fc2 in
    Qwen2-VL; gated gate/up/down with bias in Qwen2.5-VL), and the PatchMerger."""
    wv = f"{where}.vision_config"
    d = _positive(v.get("embed_dim") if kind == "qwen2-vl" else v.get("hidden_size"), "embed_dim/hidden_size", wv)
    if kind == "qwen2-vl":
        inter = int(d * float(_get(v, "mlp_ratio", where=wv, default=4)))
        blocks: tuple[Linear, ...] = (
            Linear(name="attn.qkv", in_features=d, out_features=3 * d, bias=True),
            Linear(name="attn.proj", in_features=d, out_features=d, bias=True),
            Linear(name="mlp.fc1", in_features=d, out_features=inter, bias=True),
            Linear(name="mlp.fc2", in_features=inter, out_features=d, bias=True),
        )
        out = int(_get(v, "hidden_size", where=wv, default=lm_hidden))
    else:
        inter = _positive(_get(v, "intermediate_size", where=wv), "intermediate_size", wv)
        blocks = (
            Linear(name="attn.qkv", in_features=d, out_features=3 * d, bias=True),
            Linear(name="attn.proj", in_features=d, out_features=d, bias=True),
            Linear(name="mlp.gate_proj", in_features=d, out_features=inter, bias=True),
            Linear(name="mlp.up_proj", in_features=d, out_features=inter, bias=True),
            Linear(name="mlp.down_proj", in_features=inter, out_features=d, bias=True),
        )
        out = int(_get(v, "out_hidden_size", where=wv, default=lm_hidden))
    return VisionSpec(
        kind=kind,  # type: ignore[arg-type]
        depth=_positive(_get(v, "depth", where=wv), "depth", wv),
        hidden_size=d,
        num_heads=_positive(_get(v, "num_heads", where=wv), "num_heads", wv),
        intermediate_size=inter,
        patch_size=_positive(_get(v, "patch_size", where=wv, default=14), "patch_size", wv),
        in_channels=int(v.get("in_channels", v.get("in_chans", 3))),
        temporal_patch_size=int(v.get("temporal_patch_size", 2)),
        spatial_merge_size=int(v.get("spatial_merge_size", 2)),
        gated_mlp=kind == "qwen2.5-vl",
        norm="layernorm" if kind == "qwen2-vl" else "rmsnorm",
        out_hidden_size=out,
        window_size=int(v.get("window_size", 0) or 0),
        fullatt_block_indexes=tuple(v.get("fullatt_block_indexes") or ()),
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
    if mt not in _READERS:
        raise VramplanError(where, f"model_type {mt!r} is not supported; supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
    return _READERS[mt](name, config, where)
