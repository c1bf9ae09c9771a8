"""Weight terms: frozen base (16/32-bit or quantized), quantization state, trainable
weights, and AMP's 16-bit weight copies."""

from __future__ import annotations

from functools import lru_cache

from vramplan.memory.policy import policy_of
from vramplan.memory.trainable import (
    extra_trainable_params,
    full_trainable_params,
    lora_params,
    upcast_params,
)
from vramplan.params import param_counts
from vramplan.setup import Setup
from vramplan.spec import Linear, ModelSpec
from vramplan.units import nbytes

#: bitsandbytes 4-bit block size used by transformers' BitsAndBytesConfig for weights.
BNB_4BIT_BLOCK = 64
#: second-level block size of double quantization (bitsandbytes ``quantize_4bit(compress_statistics=True)``).
BNB_DQ_BLOCK = 256
#: GPTQ/AWQ group size people publish checkpoints with.
INT4_GROUP = 128


#: checkpoint formats quantized block by block: only the decoder layers are packed.
BLOCK_QUANTS = ("gptq-int4", "awq-int4")


@lru_cache(maxsize=256)
def quantized_linears(spec: ModelSpec, quant: str = "bnb-nf4", vision: bool = True) -> tuple[Linear, ...]:
    """``nn.Linear`` modules a quantizer replaces. bitsandbytes: every one in the decoder
    layers and, with ``vision`` (Policy.quantize_vision), the vision tower; transformers'
    ``get_keys_to_not_convert`` keeps lm_head unquantized, and non-``nn.Linear`` weights (fused
    MoE experts, routers) are left as they are. GPTQ/AWQ checkpoints quantize the decoder blocks
    only (optimum's ``block_name_to_quantize``, AutoAWQ's ``get_model_layers``): a vision tower
    stays 16-bit."""
    lins = [
        lin.model_copy(update={"count": lin.count * n})
        for group, n in spec.layer_groups
        for lin in group
        if lin.nn_linear
    ]
    if spec.vision is not None and vision and quant not in BLOCK_QUANTS:
        lins += [lin.model_copy(update={"count": lin.count * spec.vision.depth}) for lin in spec.vision.blocks]
    return tuple(lins)


def quantized_weight_params(spec: ModelSpec, quant: str = "bnb-nf4", vision: bool = True) -> int:
    return sum(lin.weight_params for lin in quantized_linears(spec, quant, vision))


def quant_weight_bytes(spec: ModelSpec, quant: str, vision: bool = True) -> int:
    """Packed quantized weights: 4 bits (nf4/fp4/gptq/awq) or 8 bits (LLM.int8) per weight."""
    n = quantized_weight_params(spec, quant, vision)
    if quant == "none":
        return 0
    return nbytes(n, "int8" if quant == "bnb-int8" else "int4")


def quant_state_bytes(spec: ModelSpec, setup: Setup) -> int:
    """Quantization metadata per quantized linear (out x in weight):

    - bnb-nf4 / bnb-fp4: one fp32 absmax per 64-weight block (0.5 bit/weight).
    - bnb-nf4-dq: absmax re-quantized to uint8 per 64-block, plus one fp32 per 256 such
      blocks, plus a 256-entry fp32 code table per tensor (~0.127 bit/weight).
    - bnb-int8: one fp32 scale (SCB) per output row.
    - gptq-int4 (group 128): fp16 scales and 4-bit zeros per group and output, and an
      int32 ``g_idx`` per input. awq-int4: fp16 scales and 4-bit zeros per group and output.
    """
    q = setup.quant
    total = 0
    for lin in quantized_linears(spec, q, policy_of(setup).quantize_vision):
        # ``count`` copies of one out x in weight, each with its own quantization state
        n, out, inp, k = lin.in_features * lin.out_features, lin.out_features, lin.in_features, lin.count
        if q in ("bnb-nf4", "bnb-fp4"):
            total += k * nbytes(-(-n // BNB_4BIT_BLOCK), "fp32")
        elif q == "bnb-nf4-dq":
            blocks = -(-n // BNB_4BIT_BLOCK)
            total += k * (nbytes(blocks, "uint8") + nbytes(-(-blocks // BNB_DQ_BLOCK), "fp32") + nbytes(256, "fp32"))
        elif q == "bnb-int8":
            total += k * nbytes(out, "fp32")
        elif q in ("gptq-int4", "awq-int4"):
            groups = -(-inp // INT4_GROUP) * out
            total += k * (nbytes(groups, "fp16") + nbytes(groups, "int4"))
            if q == "gptq-int4":
                total += k * nbytes(inp, "int32")
    return total


def unquantized_dtype(setup: Setup) -> str:
    """dtype of the parameters a quantizer leaves alone. PEFT's
    ``prepare_model_for_kbit_training`` (which TRL's SFTTrainer calls for k-bit models)
    upcasts every fp16/bf16 parameter that is not a bnb ``Params4bit`` to fp32 — except on
    GPTQ models, which it leaves as they are."""
    return policy_of(setup).kbit_modules


def kept_fp32_params(spec: ModelSpec) -> int:
    """Parameters transformers keeps fp32 in a 16-bit model (``Linear.keep_fp32``: DeepSeek's
    router weights, ``_keep_in_fp32_modules_strict``), over every decoder layer."""
    return sum(n * lin.params for group, n in spec.layer_groups for lin in group if lin.keep_fp32)


def frozen_weight_bytes(spec: ModelSpec, setup: Setup) -> int:
    """Frozen parameters in their storage format.

    full: none, or the vision tower / projector it keeps frozen, in the weight dtype. freeze:
    all but the trained top layers, in the weight dtype. lora: the
    whole base model in the weight dtype. qlora: packed quantized linears, plus every
    other parameter (embeddings, lm_head, norms, biases, vision convolution) in
    :func:`unquantized_dtype`.
    """
    total = param_counts(spec).total
    w = policy_of(setup).weights
    if setup.method in ("full", "freeze"):
        _, up = upcast_params(spec, setup)
        up_dtype = policy_of(setup).upcast_modules or w
        return nbytes(total - full_trainable_params(spec, setup) - up, w) + nbytes(up, up_dtype)
    if setup.method == "lora":
        fp32 = kept_fp32_params(spec)
        return nbytes(total - fp32, w) + nbytes(fp32, "fp32")
    vision = policy_of(setup).quantize_vision
    rest = total - quantized_weight_params(spec, setup.quant, vision)
    return quant_weight_bytes(spec, setup.quant, vision) + nbytes(rest, unquantized_dtype(setup))


def trainable_weight_bytes(spec: ModelSpec, setup: Setup) -> int:
    """Trainable weights: full/freeze in the master dtype; LoRA adapters in fp32 (PEFT
    ``autocast_adapter_dtype``) plus ``modules_to_save`` copies of embeddings/lm_head,
    which keep the dtype of the module they copy unless the trainer casts them
    (:attr:`Policy.extra_weights`)."""
    d = policy_of(setup)
    if not setup.is_lora:
        up, _ = upcast_params(spec, setup)
        return nbytes(full_trainable_params(spec, setup) - up, d.master) + nbytes(up, d.upcast_modules or d.master)
    extra_dtype = d.extra_weights or (unquantized_dtype(setup) if setup.method == "qlora" else d.weights)
    return nbytes(lora_params(spec, setup), d.adapter) + nbytes(extra_trainable_params(spec, setup), extra_dtype)


def _autocast_casts(setup: Setup) -> tuple[bool, bool]:
    """(layer weights cast, lm_head cast) under autocast."""
    d = policy_of(setup)
    if not d.autocast:
        return False, False
    if setup.method == "qlora":
        return False, unquantized_dtype(setup) == "fp32"
    head_fp32 = d.upcast_modules == "fp32" and setup.method in ("full", "freeze")
    return d.weights == "fp32", d.weights == "fp32" or head_fp32


def head_autocast_copy_bytes(spec: ModelSpec, setup: Setup) -> int:
    """lm_head's 16-bit copy under autocast (2·V·h), saved by its matmul until lm_head's
    backward: with AMP, and with QLoRA, whose lm_head ``prepare_model_for_kbit_training``
    made fp32. torch ``cached_cast``; the matmul keeps the cast weight for its input's grad.
    0 under TRL's fused head (``loss_chain="fused_head"``): lm_head never runs as a module, the
    kernel casts one vocabulary chunk at a time (fused_head.forward_bytes counts it)."""
    if policy_of(setup).loss_chain == "fused_head":
        return 0
    return nbytes(spec.vocab_size * spec.hidden_size, "bf16") if _autocast_casts(setup)[1] else 0


def layer_autocast_copy_bytes(spec: ModelSpec, setup: Setup, moe: bool = False) -> int:
    """One decoder layer's 16-bit copies of its fp32 linear weights under AMP (2 B per
    weight), saved by the matmuls for backward. Under gradient checkpointing the forward runs
    without saving, autocast's cache dies when the forward's autocast region exits, and only
    the layer being recomputed holds its copies again. Quantized linears dequantize inside
    bitsandbytes instead."""
    if not _autocast_casts(setup)[0]:
        return 0
    group = spec.attention + (spec.moe_mlp if moe else spec.mlp)
    return nbytes(sum(lin.weight_params for lin in group), "bf16")


def _all_layer_copies(spec: ModelSpec, setup: Setup) -> int:
    if not _autocast_casts(setup)[0]:
        return 0
    return sum(k * nbytes(sum(lin.weight_params for lin in group), "bf16") for group, k in spec.layer_groups)


def autocast_copy_bytes(spec: ModelSpec, setup: Setup) -> int:
    """16-bit weight copies autograd holds when backward starts: lm_head's, plus every
    layer's when nothing is checkpointed."""
    total = head_autocast_copy_bytes(spec, setup)
    if not setup.grad_checkpointing:
        total += _all_layer_copies(spec, setup)
    return total


def forward_autocast_copy_bytes(spec: ModelSpec, setup: Setup) -> int:
    """16-bit weight copies alive at the end of forward, inside the autocast region: those
    autograd saved, and those autocast's cache keeps for trainable fp32 leaves until the region
    exits (all of a full/freeze AMP model's trained linears even under checkpointing; LoRA's
    adapters, 2 B per adapter weight, whatever the base, unless they already are in autocast's
    dtype, as TRL's bf16 QLoRA adapters under bf16)."""
    total = autocast_copy_bytes(spec, setup)
    if setup.grad_checkpointing and setup.method in ("full", "freeze"):
        total += _all_layer_copies(spec, setup)
    p = policy_of(setup)
    if setup.is_lora and p.autocast and p.adapter != p.activations:
        total += nbytes(lora_params(spec, setup), "bf16")
    return total
