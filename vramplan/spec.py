"""ModelSpec: the architecture facts the memory model needs, read from a config.json.

The data models live here; the readers live in :mod:`vramplan.arch`, one module per family,
each mirroring the module layout of its modeling file (transformers
``models/<type>/modeling_<type>.py``, or the publisher's remote-code ``modeling_qwen.py`` /
``visual.py`` for Qwen (v1) and Qwen-VL, read, never run). No transformers import.
"""

from __future__ import annotations

import importlib
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

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
    #: PEFT adapts this weight through ``target_parameters`` under ``all-linear`` (a MoE's router
    #: and fused expert stacks), at this multiple of the LoRA rank; 0: not such a parameter
    param_target_rank: int = 0
    #: one of ``count`` routed experts (transformers 4's per-expert ``nn.Linear``): the copies
    #: together see each token ``experts_per_token`` times, not ``count`` times
    routed: bool = False
    #: transformers keeps this weight fp32 whatever dtype the model loads in
    #: (``_keep_in_fp32_modules_strict``: DeepSeek-V2/V3's router ``gate.weight``)
    keep_fp32: bool = False

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
    #: the experts' gate goes through GPT-OSS's clamped SwiGLU (``GptOssExperts._apply_gate``:
    #: clamps, ``sigmoid(alpha * gate)`` and ``(up + 1) * glu``), not ``act(gate) * up``
    clamped_swiglu: bool = False
    #: the router takes the top k of its logits and a softmax over those k (GPT-OSS
    #: ``GptOssTopKRouter``), not an fp32 softmax over every expert
    router_topk_softmax: bool = False
    #: every expert computes every token, scaled by its score (0 when not routed): Llama 4's
    #: ``Llama4TextMoe`` repeats the hidden states E times and runs one ``bmm`` over all experts
    dense_dispatch: bool = False


class MLASpec(BaseModel):
    """Multi-head latent attention (DeepSeek-V2/V3, transformers ``DeepseekV3Attention``): q
    through a low-rank ``q_a_proj`` -> ``q_a_layernorm`` -> ``q_b_proj`` (``q_lora_rank``; 0: one
    ``q_proj``), k and v from one latent (``kv_a_proj_with_mqa`` -> ``kv_a_layernorm`` ->
    ``kv_b_proj``), each head's key ``qk_nope_head_dim`` wide plus a ``qk_rope_head_dim`` rotary part
    shared by all heads, and values ``v_head_dim`` wide."""

    model_config = Frozen
    q_lora_rank: int
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int


class VisionSpec(BaseModel):
    """A VLM's vision tower (and, separately counted, its projector to the LM)."""

    model_config = Frozen
    kind: Literal["qwen2-vl", "qwen2.5-vl", "qwen-vl", "qwen3-vl", "siglip", "pixtral"]
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
    #: a learned absolute position table of this many rows, interpolated to the patch grid, and a
    #: LayerNorm before the blocks (Qwen-VL ``positional_embedding``, ``ln_pre``); 0: rotary, none
    abs_pos_rows: int = 0
    videos: bool = False  # takes videos (frame pairs through the same tower)
    # -- Qwen3-VL (arch/qwen3_vl.py)
    #: the patch embedding's convolution has a bias (Qwen3-VL ``Qwen3VLVisionPatchEmbed``, SigLIP)
    patch_bias: bool = False
    #: a learned ``nn.Embedding`` position table of this many rows, bilinearly interpolated to each
    #: image's grid, with no LayerNorm before the blocks (Qwen3-VL ``pos_embed``); 0: none
    pos_embed_rows: int = 0
    #: blocks whose output a further patch merger (LayerNorm over 4d) hands to the early decoder
    #: layers (Qwen3-VL DeepStack, ``deepstack_visual_indexes``); empty: none
    deepstack_layers: tuple[int, ...] = ()
    #: the image processor's pixel bounds (``size.shortest_edge``/``longest_edge``); 0: Qwen2-VL's
    min_pixels: int = 0
    max_pixels: int = 0
    #: n x d tensors one trained block keeps for its backward (memory/vision.py ``saved_bytes``): 8
    #: as Qwen2-VL is planned; Qwen3-VL's traced 11 (norm1 and qkv inputs, the rotated q and k, the
    #: whole qkv output a view of v holds, the attention output, the proj, norm2 and fc1 inputs)
    block_saved_hidden: int = 8
    #: n x I tensors one trained block's MLP keeps; 0: four gated (gate, up, the activation and the
    #: product down_proj saves), two otherwise (fc1's output, saved by the activation, and the
    #: activation's, by fc2). Qwen2-VL's
    #: ``quick_gelu`` (transformers activations.py ``QuickGELUActivation``: ``x * sigmoid(1.702 x)``)
    #: keeps three: fc1's output, the sigmoid's and the product
    mlp_saved: int = 0
    #: n x d tensors a trained tower's mergers keep (Qwen3-VL: 4 for the patch merger, the LayerNorm's
    #: input and output, fc1's output and GELU's, and 3 per DeepStack merger); 0: not counted
    merger_saved_hidden: int = 0
    #: the patch embedding is the tower's input embedding (Qwen2-VL ``_input_embed_layer =
    #: "patch_embed"``), so ``enable_input_require_grads`` (LoRA under checkpointing) makes its output
    #: require grad and a frozen checkpointed tower holds every block's input; Qwen3-VL's vision model
    #: names none (its ``get_input_embeddings`` raises): a frozen tower then keeps nothing
    input_embeds_hooked: bool = True
    blocks: tuple[Linear, ...]
    # -- SigLIP (Gemma 3) and Pixtral (Mistral 3) towers and their projectors (``patch_bias`` above:
    #: SigLIP's ``patch_embedding`` is an ``nn.Conv2d`` with its default bias)
    #: a learned position table of this many rows added to the patches, no norm (SigLIP ``position_embedding``)
    pos_rows: int = 0
    #: a norm after the blocks (SigLIP ``post_layernorm``), and one before them (Pixtral ``ln_pre``)
    post_norm: bool = False
    pre_norm: bool = False
    #: the projector: "" Qwen2-VL's merger or, with ``num_queries``, Qwen-VL's resampler; "pool": Gemma 3's
    #: average pool, RMSNorm(d) and one d x out matrix; "merge_mlp": Mistral 3's RMSNorm(d), a patch merger
    #: (d·m² -> d) and a two-layer MLP (d -> out -> out, biased with ``projector_bias``)
    projector: Literal["", "pool", "merge_mlp"] = ""
    projector_bias: bool = False
    #: images are scaled down (never up) to fit this longest edge, each side then rounded up to a
    #: multiple of patch x merge (Pixtral ``get_resize_output_image_size``); 0: another resize
    longest_edge: int = 0
    #: the processor ends each row of merged patches with a break token (Pixtral ``[IMG_BREAK]``,
    #: the last one ``[IMG_END]``): one more language-model position per row
    row_break_tokens: bool = False
    #: the micro-batch's images run as one sequence through the tower, kept apart by a float
    #: block-diagonal mask of that sequence's length squared (Pixtral ``generate_block_attention_mask``)
    one_sequence: bool = False


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
    #: multi-head latent attention (DeepSeek-V2/V3): ``head_dim`` is then a query/key head's width
    #: (nope + rope), and the latent norms' weights count with the attention
    mla: MLASpec | None = None
    vision: VisionSpec | None = None
    max_position_embeddings: int = 0
    final_logit_softcapping: float | None = None
    attn_logit_softcapping: float | None = None
    embedding_name: str = "embed_tokens"
    torch_dtype: str = "bfloat16"
    #: attention implementations transformers builds this family with (Setup.attention names)
    attentions: tuple[str, ...] = ("eager", "sdpa", "flash-attn-2")
    # -- capabilities the family declares (vramplan/arch/): what the memory terms, the trace
    # and the emitters read instead of testing a model_type
    #: q, k and v come out of one projection (Phi-3 ``qkv_proj``, Qwen v1 ``c_attn``)
    fused_qkv: bool = False
    #: the model's own forward takes the loss, ``CrossEntropyLoss`` on a ``.contiguous()`` copy of the
    #: shifted logits with no ``.float()`` (Qwen v1 and Qwen-VL ``QWenLMHeadModel.forward``): the chain
    #: runs in the logits' dtype unless autocast casts its log-softmax (memory/loss.py); False:
    #: transformers' ``ForCausalLMLoss``, which upcasts the logits itself
    loss_without_upcast: bool = False
    #: gate and up come out of one projection (Phi-3 ``gate_up_proj``)
    fused_gate_up: bool = False
    #: attention keeps q/k/v as views of the fused projection's output, so the whole buffer stays
    #: saved (transformers ``Phi3Attention`` slices ``qkv``)
    qkv_split_views: bool = False
    #: the norm multiplies by its weight in fp32 (Gemma's ``x * (1 + w.float())``), so the
    #: normalized tensor that product saves is fp32
    norm_scale_fp32: bool = False
    #: q_norm/k_norm normalize the whole projection (OLMo-2 ``Olmo2RMSNorm(num_heads * head_dim)``),
    #: not each head (Qwen3 ``Qwen3RMSNorm(head_dim)``): their weights are q_dim and kv_dim wide
    qk_norm_over_projection: bool = False
    #: layers whose attention sees only the last ``sliding_window`` tokens (Gemma 3's and GPT-OSS's
    #: ``sliding_attention`` layer_types), or its own chunk of that many (Llama 4's
    #: ``chunked_attention``: sdpa gets a mask from that length on, as for a window); 0: every layer
    #: attends to the whole sequence
    sliding_layers: int = 0
    sliding_window: int = 0
    #: with images, image tokens attend to each other both ways (Gemma 3's ``token_type_ids``), so
    #: sdpa gets a boolean mask on every layer at any length (memory/activations.py ``_masked_layers``)
    image_mask_every_layer: bool = False
    #: a learned logit per query head that joins each row of scores before the softmax and is then
    #: dropped (GPT-OSS ``GptOssAttention.sinks``, one ``nn.Parameter(num_heads)`` per layer)
    attention_sinks: bool = False
    #: layers whose q and k go through a weightless L2 norm after RoPE (Llama 4's
    #: ``Llama4TextWeightlessRMSNorm`` on its RoPE layers): no parameter, fp32 saves
    rope_qk_l2_norm_layers: int = 0
    #: eager attention's softmax runs in the scores' dtype, not fp32 (Llama 4's
    #: ``eager_attention_forward``: ``softmax(attn_weights, dim=-1)`` with no ``dtype``)
    eager_softmax_in_scores_dtype: bool = False
    #: a vision tower and its projector counted but not planned as a tower (Llama 4: no term
    #: models their activations, memory/vision.py reads ``vision``): their parameters only
    tower_params: int = 0
    tower_projector_params: int = 0
    #: why PEFT's ``all-linear`` cannot train this model (Llama 4: its router is an ``nn.Linear``
    #: returning a tuple); empty: it can
    all_linear_refused: str = ""
    #: the released checkpoint's quantization that training loads dequantized to the model's dtype
    #: (GPT-OSS's MXFP4 experts, ``quantization_config.quant_method``); empty: none planned for
    checkpoint_quant: str = ""
    #: the transformers class FSDP wraps one unit of (``_no_split_modules`` of its
    #: ``AutoModelForCausalLM`` class); empty when not known
    decoder_layer: str = ""
    #: ``transformers.models.<this>.modeling_<this>`` builds the model; empty for remote code
    transformers_module: str = ""
    #: transformers cannot build it without running the publisher's code (Qwen v1, Qwen-VL)
    remote_code: bool = False
    #: (trainer, its chat template name), e.g. ("llamafactory", "llama3")
    chat_templates: tuple[tuple[str, str], ...] = ()
    #: (trainer, the model type its registry gives the family) where the trainer must be told
    #: because the config does not say (ms-swift's ``--model_type`` for Qwen v1 and Qwen-VL, whose
    #: configs share ``architectures: QWenLMHeadModel``)
    trainer_model_types: tuple[tuple[str, str], ...] = ()
    #: dotted path of the decoder layers' container (``transformer.h``) where an emitted config must
    #: name a layer's module in full (a LoRA target whose short name a vision tower shares); empty: unknown
    layer_module: str = ""
    #: why this spec is an approximation (``no family module for X``: arch/generic.py read it as
    #: a Llama-style decoder); empty when the family's own module read it
    approximate: str = ""
    #: the transformers major version whose module layout this spec describes (vramplan/stack.py),
    #: for a family whose layout differs between versions (mixtures of experts); 0: the same in all
    transformers: int = 0

    @property
    def q_dim(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def qk_norm_shapes(self) -> tuple[int, ...]:
        """The widths of one layer's q_norm and k_norm weights (none without q/k norms)."""
        if not self.qk_norm:
            return ()
        return (self.q_dim, self.kv_dim) if self.qk_norm_over_projection else (self.head_dim, self.head_dim)

    @property
    def kv_cache_widths(self) -> tuple[int, int]:
        """What one layer caches per token as keys and as values: kv_heads x head_dim each, or
        MLA's compressed latent and its rotary key (transformers 5.25 ``DeepseekV3Attention``
        calls ``cache.update(kv_nope, k_rot)`` before expanding them: kv_lora_rank and qk_rope wide)."""
        if self.mla is not None:
            return self.mla.kv_lora_rank, self.mla.qk_rope_head_dim
        return self.kv_dim, self.kv_dim

    @property
    def latent_norm_shapes(self) -> tuple[int, ...]:
        """The widths of one layer's latent norms (MLA ``q_a_layernorm``, ``kv_a_layernorm``)."""
        if self.mla is None:
            return ()
        return tuple(w for w in (self.mla.q_lora_rank, self.mla.kv_lora_rank) if w)

    @property
    def sink_shapes(self) -> tuple[int, ...]:
        """The widths of one layer's attention sinks (GPT-OSS: one logit per query head)."""
        return (self.num_heads,) if self.attention_sinks else ()

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


def __getattr__(name: str) -> Any:
    """The readers moved to :mod:`vramplan.arch`; ``from vramplan.spec import spec_from_config``
    (and ``SUPPORTED_MODEL_TYPES``) still work, loaded on first use as ``vramplan/__init__.py``
    loads its names."""
    if name in ("spec_from_config", "SUPPORTED_MODEL_TYPES"):
        return getattr(importlib.import_module("vramplan.arch"), name)
    raise AttributeError(f"module 'vramplan.spec' has no attribute {name!r}")
