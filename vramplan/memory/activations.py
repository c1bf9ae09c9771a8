"""Activations saved for backward, layer by layer, as autograd keeps them on CUDA.

Symbols (Korthikanti et al. 2022 notation): t = b·s tokens of a micro-batch, h hidden,
I MLP width, a attention heads, q = a·d and k = a_kv·d the query and key/value widths,
r LoRA rank, A bytes per activation element, R bytes per residual element.

A tensor counts when autograd saves it: a linear saves its input only if its weight
trains (``mm`` saves ``self`` for the weight's grad); element-wise ops save what their
input's grad needs (silu its input, mul both operands, sdpa q/k/v/out/logsumexp).
"""

from __future__ import annotations

from functools import lru_cache

from vramplan.memory.policy import act_bytes, pointwise_bytes, policy_of, residual_bytes
from vramplan.memory.trainable import (
    layer_kind_counts,
    lora_group,
    lora_linears,
    param_targets,
    trainable_layers,
)
from vramplan.memory.weights import unquantized_dtype
from vramplan.setup import Setup
from vramplan.spec import Linear, ModelSpec
from vramplan.units import nbytes


def norm_saved_bytes(spec: ModelSpec, setup: Setup, width: int, weight_trains: bool) -> int:
    """One RMSNorm (transformers ``LlamaRMSNorm``): the fp32 input (``x.to(float32)``,
    saved by ``pow`` and ``mul``) 4·t·w, ``rsqrt`` 4·t, and the normalized tensor that
    multiplies the weight, saved only when the weight trains (R·t·w; 4·t·w where the family's
    norm scales in fp32, ``spec.norm_scale_fp32``: Gemma's ``x * (1 + w.float())``)."""
    t = setup.tokens
    total = 4 * t * width + 4 * t
    if weight_trains:
        total += (4 if spec.norm_scale_fp32 else residual_bytes(setup)) * t * width
    return total


def attention_core_bytes(spec: ModelSpec, setup: Setup, weight_trains: bool) -> int:
    """Attention between the projections.

    sdpa / flash-attn-2: q and k after RoPE, v and the output (A·t·(2q + 2k)) plus the fp32
    logsumexp (4·b·a·s); RoPE itself saves only cos/sin. Eager (transformers
    ``eager_attention_forward``): ``repeat_kv`` copies k and v to all heads (A·t·q each when
    a_kv < a), the fp32 softmax (4·b·a·s²) and its 16-bit copy (A·b·a·s²), and the
    ``contiguous()`` output that o_proj saves when its weight trains (A·t·q).
    """
    if spec.mla is not None:
        return mla_core_bytes(spec, setup, weight_trains)
    b, s, t, A = setup.micro_batch, setup.seq_len, setup.tokens, act_bytes(setup)
    q, k, a = spec.q_dim, spec.kv_dim, spec.num_heads
    # q, k, v sliced out of one fused projection's output (spec.qkv_split_views, Phi-3): the v
    # that attention saves is a view, so the whole fused buffer stays alive, q and k parts included.
    fused = A * t * (q + k) if spec.qkv_split_views else 0
    if setup.attention != "eager":
        return A * t * (2 * q + 2 * k) + 4 * b * a * s + fused
    kv = q if spec.num_kv_heads < a else k
    probs = 4 * b * a * s * s + (A * b * a * s * s if A < 4 else 0)
    if spec.attention_sinks:
        probs = sink_probs_bytes(spec, setup)
    elif spec.eager_softmax_in_scores_dtype:  # one probability tensor in the scores' dtype
        probs = A * b * a * s * s
    # Gemma-2 soft-caps the scores, tanh(scores / cap) * cap: tanh saves its output
    softcap = A * b * a * s * s if spec.attn_logit_softcapping else 0
    out = A * t * q if weight_trains else 0
    return A * t * (q + 2 * kv) + probs + softcap + out + fused


def sink_probs_bytes(spec: ModelSpec, setup: Setup) -> int:
    """Eager attention with sinks (GPT-OSS, transformers 5.25 ``gpt_oss`` ``eager_attention_forward``):
    the sink logit joins each row of scores (``torch.cat``, s + 1 columns), the row maximum is
    subtracted (``max`` saves its int64 indices, 8·b·a·s) and the softmax runs in the scores' own
    dtype (``dtype=combined_logits.dtype``), so one A·b·a·s·(s + 1) probability tensor is saved,
    not an fp32 softmax and its 16-bit copy."""
    b, s, a, A = setup.micro_batch, setup.seq_len, spec.num_heads, act_bytes(setup)
    return A * b * a * s * (s + 1) + 8 * b * a * s


def mla_core_bytes(spec: ModelSpec, setup: Setup, weight_trains: bool) -> int:
    """Multi-head latent attention between the projections (transformers 5.25
    ``DeepseekV3Attention.forward``, ``DeepseekV2Attention.forward``): ``torch.cat`` makes the
    query and ``expand_kv`` the key as new tensors, each a·(nope + rope) wide (qk per token), while
    the values stay a view of ``kv_b_proj``'s output, which is a·(nope + v) wide (kvb), and the
    output is a·v wide (o). sdpa / flash-attn-2 (CUDA's memory-efficient kernel, which takes a
    value head narrower than the query's, where flash attention refuses q, k and v of unequal
    last dimensions: torch ``aten/src/ATen/native/transformers/cuda/sdp_utils.cpp``
    ``check_head_dim_size_flash``): A·t·(2·qk + kvb + o) and the fp32 logsumexp
    (4·b·a·s). Eager (``eager_attention_forward``): the query and the transposed key saved by the
    score matmul (A·t·2·qk), the fp32 softmax and its 16-bit copy (as for any eager layer), the
    values the probability matmul saves as its own contiguous copy (A·t·o), and o_proj's input
    when its weight trains (A·t·o). A CPU sdpa falls back to its fp32 math kernel for these
    unequal head widths, so the traces run eager (tests/test_family_traces.py ``DEEPSEEK_GRID``)."""
    assert spec.mla is not None
    m, a = spec.mla, spec.num_heads
    b, s, t, A = setup.micro_batch, setup.seq_len, setup.tokens, act_bytes(setup)
    qk, kvb, o = (
        a * (m.qk_nope_head_dim + m.qk_rope_head_dim),
        a * (m.qk_nope_head_dim + m.v_head_dim),
        a * m.v_head_dim,
    )
    if setup.attention != "eager":
        return A * t * (2 * qk + kvb + o) + 4 * b * a * s
    probs = 4 * b * a * s * s + (A * b * a * s * s if A < 4 else 0)
    return A * t * (2 * qk + o) + probs + (A * t * o if weight_trains else 0)


def latent_norm_bytes(spec: ModelSpec, setup: Setup, weight_trains: bool) -> int:
    """MLA's ``q_a_layernorm`` and ``kv_a_layernorm`` (transformers ``DeepseekV3RMSNorm``, Llama's):
    an RMSNorm over each latent, q_lora_rank and kv_lora_rank wide."""
    return sum(norm_saved_bytes(spec, setup, w, weight_trains) for w in spec.latent_norm_shapes)


def qk_norm_bytes(spec: ModelSpec, setup: Setup, weight_trains: bool) -> int:
    """Qwen3 q_norm/k_norm: an RMSNorm over head_dim on q and on k."""
    if not spec.qk_norm:
        return 0
    return norm_saved_bytes(spec, setup, spec.q_dim + spec.kv_dim, weight_trains)


def rope_qk_l2_norm_bytes(spec: ModelSpec, setup: Setup) -> int:
    """Llama 4's weightless L2 norm of q and k on its RoPE layers (transformers 5.25
    ``Llama4TextWeightlessRMSNorm``: ``x.float()`` then ``x * rsqrt(mean(x²) + eps)``): the fp32
    copy of q and k (4·t·(q + k)) and one fp32 rsqrt per head and token (4·t·(a + a_kv)). Spread
    evenly over the layers, as :func:`window_mask_bytes` is."""
    if not spec.rope_qk_l2_norm_layers:
        return 0
    t = setup.tokens
    per_layer = 4 * t * (spec.q_dim + spec.kv_dim) + 4 * t * (spec.num_heads + spec.num_kv_heads)
    return per_layer * spec.rope_qk_l2_norm_layers // spec.num_layers


def _masked_window(spec: ModelSpec, setup: Setup) -> bool:
    """Whether sdpa gets a mask on the sliding-window layers: from the window's length on
    (transformers 5.25 and 4.57 masking_utils ``_ignore_causal_mask_sdpa`` keeps the mask when
    ``kv_length >= local_attention_size``, even at the window's length where it masks nothing),
    and on every layer at any length when images make their tokens attend bidirectionally
    (``spec.image_mask_every_layer``)."""
    return _masked_layers(spec, setup) > 0


def _masked_layers(spec: ModelSpec, setup: Setup) -> int:
    """How many layers sdpa gets a boolean mask on: the sliding-window ones from the window's
    length on, or all of them with images in a family whose image tokens attend to each other
    (Gemma 3: ``token_type_ids`` make ``create_masks_for_vision_model`` build an or-ed block mask
    for the global layers and the sliding ones alike, at any length; traced on gemma-3-4b,
    tests/test_gemma3_vision.py)."""
    if setup.attention != "sdpa":
        return 0
    if spec.image_mask_every_layer and setup.has_media:
        return spec.num_layers
    return spec.sliding_layers if spec.sliding_layers and setup.seq_len >= spec.sliding_window else 0


def window_mask_bytes(spec: ModelSpec, setup: Setup) -> int:
    """sdpa on a sliding-window layer (``spec.sliding_layers``) from its window on: transformers
    passes a boolean (b, 1, s, s) mask (``create_sliding_window_causal_mask``), which
    ``scaled_dot_product_attention`` turns into a float bias of the query's dtype
    (``convert_boolean_attn_mask``) that the kernel saves for backward: A·b·s² per such layer.
    Global layers pass no mask (``is_causal``), flash-attn-2 windows without one and eager adds
    the mask to the scores it keeps anyway. Spread evenly over the layers (the layer runs do not
    tell sliding layers from global ones): a recomputed layer under checkpointing is short by the
    global layers' share. Traced on Gemma 3 1B (tests/test_family_traces.py) and Mistral-7B-v0.1
    (tests/test_sliding_window_traces.py)."""
    if not _masked_window(spec, setup):
        return 0
    b, s = setup.micro_batch, setup.seq_len
    return act_bytes(setup) * b * s * s * _masked_layers(spec, setup) // spec.num_layers


def window_kv_repeat_bytes(spec: ModelSpec, setup: Setup) -> int:
    """Grouped-query attention on a masked sliding-window layer: with a mask transformers does not
    ask sdpa for ``enable_gqa`` (transformers 5.25 integrations/sdpa_attention.py
    ``use_gqa_in_sdpa``: ``attention_mask is None`` on CUDA; 4.57 likewise) but copies k and v to
    every query head (``repeat_kv``: expand, then reshape), and the kernel saves the copies
    instead of k and v: A·t·2(q - k) more than :func:`attention_core_bytes` counts, per such
    layer. A single key/value head (Gemma 3 1B) is repeated by a view, which copies nothing
    (the traced peak keeps no copy) (3.0 GiB of Mistral-7B-v0.1's 86.2 at 8192 tokens: traced with and without
    ``TRANSFORMERS_SDPA_FORCE_GQA``)."""
    if not _masked_window(spec, setup) or not 1 < spec.num_kv_heads < spec.num_heads:
        return 0  # one key/value head: the expanded (b, 1, n, s, d) reshapes as a view, no copy
    extra = 2 * act_bytes(setup) * setup.tokens * (spec.q_dim - spec.kv_dim)
    return extra * _masked_layers(spec, setup) // spec.num_layers


def window_mask_held_bytes(spec: ModelSpec, setup: Setup) -> int:
    """The boolean sliding-window mask itself under gradient checkpointing: built once per forward
    as a (1, 1, s, s) tensor expanded to the batch (transformers 5.25 masking_utils ``sdpa_mask``:
    the mask function reads no batch index, then ``expand``), it is an argument of every
    checkpointed layer, which ``torch.utils.checkpoint`` keeps for the recomputation until
    backward is done: s² bytes (64 MiB at 8192 tokens, seen in Mistral-7B-v0.1's traced peak).
    Without checkpointing nothing saves it."""
    if not _masked_window(spec, setup) or not setup.grad_checkpointing:
        return 0
    if spec.image_mask_every_layer and setup.has_media:
        # the block masks read each sample's token types: (b, 1, s, s), one for the global
        # layers and one for the sliding ones
        return (2 if spec.sliding_layers else 1) * setup.micro_batch * setup.seq_len * setup.seq_len
    return setup.seq_len * setup.seq_len


def mlp_bytes(spec: ModelSpec, setup: Setup, layer: int, weight_trains: bool) -> int:
    """Gated MLP ``down(act(gate(x)) * up(x))``: gate output (saved by the activation),
    activation output and up output (saved by the product): 3·A·t·I, plus the product
    saved by ``down_proj`` when it trains. MoE layers (transformers ``Qwen3MoeExperts``, one
    expert at a time): per routed token (t·k) the gate/up output, the activation and the
    expert output the routing-weight product saves, the gathered inputs when experts train,
    and the fp32 router softmax (4·t·E). transformers 4 (``Linear.routed`` experts) also keeps
    the weighted expert output that ``index_add_`` adds into the layer's output (A·t·k·h)."""
    t, A = setup.tokens, pointwise_bytes(setup)
    moe = spec.moe
    if moe is not None and layer in moe.layers:
        # Llama 4 (``moe.dense_dispatch``) runs every expert on every token: t·E rows, not t·k
        tk = t * (moe.num_experts if moe.dense_dispatch else moe.experts_per_token)
        inter = moe.expert_intermediate_size
        # per routed token: the gate/up output (kept whole by the chunk views), the activation,
        # and the expert output that the routing-weight product saves; trained experts also
        # keep their gathered input and the down_proj input
        routed = 3 * A * tk * inter + A * tk * spec.hidden_size
        if moe.clamped_swiglu:
            # GPT-OSS ``_apply_gate``: the clamped gate (saved by its product with the sigmoid), the
            # sigmoid, ``up + 1`` and the product ``glu`` (saved by the last product): 3·A·tk·I more
            # than act(gate) * up saves; the clamped up is freed by ``+ 1``, which saves nothing
            routed += 3 * A * tk * inter
        if weight_trains:
            routed += A * tk * inter + A * tk * spec.hidden_size
        if any(lin.routed for lin in spec.moe_mlp):
            # transformers 4's loop over per-expert modules adds each expert's weighted output into
            # the layer's output with ``index_add_``, whose backward keeps that source tensor too
            routed += A * tk * spec.hidden_size
        # shared experts (DeepSeek ``shared_experts``): a gated MLP every token goes through
        shared = moe.shared_expert_intermediate_size
        dense = 3 * A * t * shared + (A * t * shared if weight_trains else 0)
        # the router: an fp32 softmax over every expert, or GPT-OSS's softmax over the top k
        # (``GptOssTopKRouter``: in the logits' dtype) and topk's int64 indices
        router = (A + 8) * t * moe.experts_per_token if moe.router_topk_softmax else 4 * t * moe.num_experts
        return routed + dense + router
    inter = spec.intermediate_size
    return 3 * A * t * inter + (A * t * inter if weight_trains else 0)


def linear_input_bytes(spec: ModelSpec, setup: Setup, weight_trains: bool) -> int:
    """Inputs that trainable projections save: the attention and MLP inputs. Under AMP each
    projection casts its fp32 input to 16 bits on its own (autocast caches only
    parameters), so q/k/v keep three copies and gate/up two (one each where the family fuses
    them: ``spec.fused_qkv``, ``spec.fused_gate_up``). MLA (``spec.mla``): two projections read
    the layer's input (q_proj or q_a_proj, and kv_a_proj_with_mqa), and q_b_proj and kv_b_proj
    save their normalized latents (A·t·(q_lora_rank + kv_lora_rank))."""
    if not weight_trains:
        return 0
    t, A, h = setup.tokens, act_bytes(setup), spec.hidden_size
    amp = policy_of(setup).autocast and residual_bytes(setup) == 4
    attn_copies = (2 if spec.mla is not None else 3) if amp and not spec.fused_qkv else 1
    mlp_copies = 2 if amp and not spec.fused_gate_up else 1
    return (attn_copies + mlp_copies) * A * t * h + A * t * sum(spec.latent_norm_shapes)


def lora_saved_bytes(spec: ModelSpec, setup: Setup, layer: int) -> int:
    """PEFT ``lora.Linear.forward``: the input is cast to the fp32 adapter dtype, passed
    through ``lora_dropout`` and into ``lora_A``, which under autocast saves its own 16-bit
    cast of it (A·t·in; 4·t·in without autocast); with dropout > 0 the fused CUDA dropout
    kernel also saves a bool mask (1·t·in; a CPU run saves an fp32 noise tensor instead);
    ``lora_B`` saves ``lora_A``'s output (A·t·r). Routed experts' adapters (transformers 4's
    per-expert ``nn.Linear``, ``Linear.routed``) see only the tokens routed to them: t·k over
    all ``count`` experts together."""
    t, r, A = setup.tokens, setup.lora_rank, act_bytes(setup)
    per_in = A + (1 if setup.lora_dropout > 0 else 0)
    k = spec.moe.experts_per_token if spec.moe is not None else 1
    return sum(
        (t * k if lin.routed else lin.count * t) * (per_in * lin.in_features + A * r)
        for lin in lora_linears(spec, setup, layer)
    )


def int8_kept_input_bytes(spec: ModelSpec, setup: Setup) -> int:
    """LLM.int8 (bitsandbytes ``MatMul8bitLt``) stores each input as a plain attribute,
    ``ctx.tensors = (CAt, subA, A)``, not through ``save_for_backward``, so checkpointing's
    saved-tensor hooks never drop it: every layer keeps the inputs of its int8 linears —
    attention and MLP inputs (R·t·h each, shared by q/k/v and by gate/up), o_proj's input
    (A·t·q) and down_proj's (P·t·I, the fp32 product) — with or without checkpointing."""
    if setup.quant != "bnb-int8":
        return 0
    t, h = setup.tokens, spec.hidden_size
    R, A, P = residual_bytes(setup), act_bytes(setup), pointwise_bytes(setup)
    return 2 * R * t * h + A * t * spec.q_dim + P * t * spec.intermediate_size


def layer_saved_bytes(spec: ModelSpec, setup: Setup, layer: int) -> int:
    """Everything one decoder layer saves for backward without checkpointing."""
    trains = layer in trainable_layers(spec, setup) and not setup.is_lora
    moe = spec.moe is not None and layer in spec.moe.layers
    return _layer_saved(spec, setup, trains, moe)


def layer_kind_saved_bytes(spec: ModelSpec, setup: Setup, moe: bool, trained: bool) -> int:
    """:func:`layer_saved_bytes` of a layer of one kind: MoE or dense, in the trained layers or not."""
    return _layer_saved(spec, setup, trained and not setup.is_lora, moe)


@lru_cache(maxsize=4096)
def _layer_saved(spec: ModelSpec, setup: Setup, trains: bool, moe: bool) -> int:
    """Layers of one kind (trained or not, MoE or dense) save the same: memoised on the kind."""
    layer = (
        spec.moe.layers[0]
        if moe and spec.moe
        else next(i for i in range(spec.num_layers) if spec.moe is None or i not in spec.moe.layers)
    )
    h = spec.hidden_size
    return (
        spec.norms_per_layer * norm_saved_bytes(spec, setup, h, trains)
        + linear_input_bytes(spec, setup, trains)
        + qk_norm_bytes(spec, setup, trains)
        + rope_qk_l2_norm_bytes(spec, setup)
        + latent_norm_bytes(spec, setup, trains)
        + attention_core_bytes(spec, setup, trains)
        + window_mask_bytes(spec, setup)
        + window_kv_repeat_bytes(spec, setup)
        + mlp_bytes(spec, setup, layer, trains)
        + lora_saved_bytes(spec, setup, layer)
        + int8_kept_input_bytes(spec, setup)
        + folded_weight_bytes(spec, setup, layer)
    )


def folded_weight_bytes(spec: ModelSpec, setup: Setup, layer: int) -> int:
    """What training a targeted parameter through PEFT's ``ParamWrapper`` adds to one layer's
    saved tensors (MoE router and fused experts under ``all-linear``).

    PEFT folds the adapter into a whole new weight, ``W + scaling·B·A`` (``baddbmm`` per
    expert stack in the weight's dtype, cached for the module's forward), and the experts'
    matmuls save it for backward: every targeted parameter's full size, plus the 16-bit
    casts of its adapter factors that ``baddbmm`` keeps (rank·E·(in + out)). Because the
    folded weights now need gradients, the expert matmuls also keep their inputs: the routed
    tokens (t·k·h) for ``gate_up_proj`` and the activated intermediate (t·k·I) for
    ``down_proj``, which frozen experts do not save."""
    targets = param_targets(spec.layer_linears(layer), setup)
    if not targets:
        return 0
    # the targeted parameters stay unquantized: fp32 after PEFT's k-bit upcast under QLoRA
    dt = unquantized_dtype(setup) if setup.method == "qlora" else policy_of(setup).weights
    folded = sum(nbytes(lin.count * lin.in_features * lin.out_features, dt) for lin, _ in targets)
    factors = sum(nbytes(rank * lin.count * (lin.in_features + lin.out_features), dt) for lin, rank in targets)
    routed = 0
    if spec.moe is not None and any(lin.count > 1 for lin, _ in targets):
        tk = setup.tokens * spec.moe.experts_per_token
        routed = act_bytes(setup) * tk * (spec.hidden_size + spec.moe.expert_intermediate_size)
    return folded + factors + routed


def saving_layers(spec: ModelSpec, setup: Setup) -> range:
    """Layers autograd records: from the first layer with anything trainable upward
    (freeze fine-tuning records nothing below its first trained layer)."""
    if setup.is_lora:
        return range(spec.num_layers)
    return trainable_layers(spec, setup)


def kind_bounds(spec: ModelSpec, setup: Setup) -> tuple[int, int]:
    """The first trained and the first recorded layer (``num_layers`` for none): with the
    MoE layers they sort the layers into kinds (trainable.py ``layer_kind_runs``)."""
    trained, recorded = trainable_layers(spec, setup), saving_layers(spec, setup)
    L = spec.num_layers
    return (trained.start if len(trained) else L), (recorded.start if len(recorded) else L)


def head_saved_bytes(spec: ModelSpec, setup: Setup) -> int:
    """Final norm, plus lm_head's input when lm_head trains (full, or an extra module), plus
    what the whole forward shares: RoPE's cos and sin (A·t·d each, saved by every layer's
    rotary ``mul``) and the int64 token ids and labels (input, padded, shifted: 3·8·t)."""
    lm_trains = setup.method == "full" or "lm_head" in setup.trainable_extra
    t = setup.tokens
    extra = act_bytes(setup) * t * spec.hidden_size if lm_trains else 0
    rope = spec.mla.qk_rope_head_dim if spec.mla is not None else spec.head_dim  # MLA rotates 64 of 192
    shared = 2 * act_bytes(setup) * t * rope + 3 * 8 * t
    return norm_saved_bytes(spec, setup, spec.hidden_size, setup.method == "full") + extra + shared


def saved_activation_bytes(spec: ModelSpec, setup: Setup) -> int:
    """All activations alive at the end of forward.

    With gradient checkpointing (``torch.utils.checkpoint`` per decoder layer) only each
    layer's input survives: R·t·h per recorded layer. Without it, every recorded layer's
    :func:`layer_saved_bytes`.
    """
    layers = saving_layers(spec, setup)
    if setup.grad_checkpointing:
        body = len(layers) * checkpoint_bytes(spec, setup) + (window_mask_held_bytes(spec, setup) if len(layers) else 0)
    else:
        kinds = layer_kind_counts(spec, *kind_bounds(spec, setup))
        body = sum(n * layer_saved_bytes(spec, setup, rep) for rep, n, _, _, recorded in kinds if recorded)
    return body + (head_saved_bytes(spec, setup) if len(layers) else 0)


def checkpoint_bytes(spec: ModelSpec, setup: Setup) -> int:
    """What ``torch.utils.checkpoint`` keeps of one decoder layer: its input, R·t·h (and what
    escapes the checkpoint: LLM.int8's kept inputs)."""
    return residual_bytes(setup) * setup.tokens * spec.hidden_size + int8_kept_input_bytes(spec, setup)


def checkpoint_shared_bytes(spec: ModelSpec, setup: Setup) -> int:
    """What a re-run layer's saved tensors share with its checkpoint: with an fp32 residual stream
    (QLoRA after PEFT's k-bit preparation, AMP, fp32) the first norm's fp32 input (``x.to(float32)``
    returns x itself) is the layer's input, the checkpoint already held (R·t·h); 0 otherwise, where
    the norm saves a cast copy. Traced on Mistral-7B v0.1 QLoRA, 4 x 4,096 tokens: one fp32 t x h
    at the layer's peak beside the checkpoints, not two."""
    if not setup.grad_checkpointing or residual_bytes(setup) != 4:
        return 0
    return 4 * setup.tokens * spec.hidden_size


def widest_intermediate(spec: ModelSpec) -> int:
    """The widest MLP intermediate per token: the dense one, or a MoE layer's experts side by side
    (every expert under ``dense_dispatch``, else the routed ones)."""
    inter = spec.intermediate_size
    if spec.moe is not None:
        m = spec.moe
        inter = max(inter, m.expert_intermediate_size * (m.num_experts if m.dense_dispatch else m.experts_per_token))
    return inter


def backward_transient_bytes(spec: ModelSpec, setup: Setup) -> int:
    """Gradient buffers inside one layer's backward: incoming and outgoing residual grads
    (2·R·t·h), the MLP intermediates' grads (3·A·t·I, or for eager attention the fp32
    probability grad and its 16-bit copy if larger), and the grad of the widest LoRA input
    in the adapters' dtype (4·t·in for PEFT's fp32 adapters, 2·t·in for TRL's bf16 QLoRA ones),
    and under checkpointing the sliding-window mask the checkpoints hold (:func:`window_mask_held_bytes`)."""
    if not len(saving_layers(spec, setup)):
        return 0
    t, A, R = setup.tokens, act_bytes(setup), residual_bytes(setup)
    inter = widest_intermediate(spec)
    inner = 3 * A * t * inter
    if setup.attention == "eager":
        b, s, a = setup.micro_batch, setup.seq_len, spec.num_heads
        inner = max(inner, (4 + A) * b * a * s * s)
    adapted = [lin for group, _ in spec.layer_groups for lin in lora_group(group, setup)]
    widest = max((lin.in_features for lin in adapted), default=0)
    lora_grad = nbytes(t * widest, policy_of(setup).adapter)
    grads = 2 * R * t * spec.hidden_size + inner + lora_grad
    # the checkpoints' shared window mask stays held through every layer's backward
    moments = (grads, recomputed_down_adapter_bytes(spec, setup), frozen_mlp_backward_bytes(spec, setup, adapted))
    return max(moments) + window_mask_held_bytes(spec, setup)


def frozen_mlp_backward_bytes(spec: ModelSpec, setup: Setup, adapted: list[Linear]) -> int:
    """The backward of a frozen MLP whose intermediates are wider than the activations (QLoRA
    after PEFT's k-bit preparation: bitsandbytes casts each 4-bit projection's output back to the
    fp32 input's dtype, ``Linear4bit.forward``): beside the recomputed gate, up and activation
    the gradients of the product, of the activation and of up are alive together in that dtype
    (3·P·t·I), with the layer output's gradient (R·t·h). Traced on Mistral-7B v0.1 QLoRA on the
    attention projections, 4 x 4,096 tokens: six fp32 t x I tensors and one fp32 t x h at the
    peak. An adapted MLP peaks at another moment (``down_proj``'s adapter)."""
    if setup.method not in ("lora", "qlora") or spec.moe is not None:
        return 0
    inter, t = spec.intermediate_size, setup.tokens
    if any(inter in (lin.in_features, lin.out_features) for lin in adapted):
        return 0
    P = pointwise_bytes(setup)
    if P <= act_bytes(setup):
        return 0
    return residual_bytes(setup) * t * spec.hidden_size + 3 * P * t * inter


def recomputed_down_adapter_bytes(spec: ModelSpec, setup: Setup) -> int:
    """Under checkpointing with LoRA dropout, what a layer's recompute holds beside the layer's
    saved tensors when it reaches ``down_proj``'s adapter (0 when that is not the larger moment).

    A layer's backward starts at its last node, ``* scaling`` on ``down_proj``'s ``lora_B``
    output, which makes the scaled grad before ``lora_B``'s saved input is asked for; that
    request re-runs the layer's forward (torch 2.13 ``utils/checkpoint.py``
    ``_recomputation_hook``, ``early_stop`` on: it stops once ``lora_B`` has saved its input).
    At ``lora_A`` inside that re-run (PEFT 0.21.2 ``tuners/lora/layer.py`` ``Linear.forward``:
    ``x = self._cast_input_dtype(x, lora_A.weight.dtype)``, then ``lora_B(lora_A(dropout(x)))``)
    these are alive and not saved: the layer output's grad (R·t·h) and its scaled copy
    (A·t·h), the residual after attention (R·t·h) and the MLP input (A·t·h) held by the
    decoder layer's frames (transformers 5.25 ``MistralDecoderLayer.forward``), the product
    ``down_proj`` reads (P·t·I in the intermediates' dtype, saved by nothing when its weight is
    frozen), ``down_proj``'s base output (A·t·h), and in the adapters' dtype the cast input (none
    where the product already has that dtype: QLoRA's fp32, traced at 4 x 4,096 tokens) and the
    dropout output (the dropout keeps only its mask, already in :func:`lora_saved_bytes`). Without dropout
    ``nn.Identity`` makes no copy and the gradient buffers of the backward itself are larger.
    Traced on Mistral-7B v0.1 LoRA (all-linear, dropout 0.05, bf16, seq 1024): 10·t·(h + I)
    bytes, 6·t·h more than those buffers."""
    if not (setup.grad_checkpointing and setup.is_lora and setup.lora_dropout > 0) or spec.moe is not None:
        return 0
    inter = spec.intermediate_size
    down = [lin for group, _ in spec.layer_groups for lin in lora_group(group, setup) if lin.in_features == inter]
    if not down or not len(saving_layers(spec, setup)):
        return 0
    t, A, R, h = setup.tokens, act_bytes(setup), residual_bytes(setup), spec.hidden_size
    pol = policy_of(setup)
    adapter = pol.adapter
    # the product is in the intermediates' dtype (fp32 after PEFT's k-bit preparation); ``.to`` a
    # tensor already in the adapters' dtype returns it: no copy
    cast = 0 if adapter == pol.pointwise else nbytes(t * inter, adapter)
    # the scaled grad is in ``lora_B``'s output dtype: 16-bit under autocast, else the adapters'
    scaled = A * t * h if pol.autocast else nbytes(t * h, adapter)
    product = pointwise_bytes(setup) * t * inter
    return 2 * R * t * h + 2 * A * t * h + scaled + product + cast + nbytes(t * inter, adapter)
