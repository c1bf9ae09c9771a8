"""Gradients, optimizer state and the optimizer step's temporaries."""

from __future__ import annotations

import math
from functools import lru_cache

from vramplan.memory.policy import policy_of
from vramplan.memory.trainable import (
    extra_trainable_params,
    full_trainable_params,
    largest_trainable_tensor,
    layer_params,
    lora_linears,
    lora_params,
    param_target_params,
    trainable_layers,
    trainable_shapes,
    upcast_params,
)
from vramplan.setup import Setup
from vramplan.spec import ModelSpec
from vramplan.units import nbytes

#: bitsandbytes 8-bit optimizers quantize state in blocks of 256 with one fp32 absmax each.
BNB_OPTIM_BLOCK = 256
#: bitsandbytes ``Optimizer8bit`` keeps smaller tensors' state in 32 bits (``min_8bit_size``).
BNB_MIN_8BIT_SIZE = 4096


def _by_dtype(spec: ModelSpec, setup: Setup) -> list[tuple[int, str]]:
    """(trainable elements, dtype) pairs: full/freeze in the master dtype (the embedding, lm_head
    and norms in ``upcast_modules`` when the policy sets it), LoRA adapters fp32, modules_to_save
    copies in the base weight dtype (fp32 after k-bit preparation)."""
    p = policy_of(setup)
    if not setup.is_lora:
        up, _ = upcast_params(spec, setup)
        pairs: list[tuple[int, str]] = [(full_trainable_params(spec, setup) - up, p.master)]
        return pairs + [(up, p.upcast_modules)] if up and p.upcast_modules else pairs
    return [(lora_params(spec, setup), p.adapter), (extra_trainable_params(spec, setup), p.extra_trainable)]


def gradient_bytes(spec: ModelSpec, setup: Setup) -> int:
    """One gradient per trainable element, in the trainable tensor's dtype
    (``param.grad`` matches ``param.dtype``). With AMP the master is fp32, so are grads."""
    return sum(nbytes(n, dt) for n, dt in _by_dtype(spec, setup))


@lru_cache(maxsize=64)
def kind_representatives(spec: ModelSpec) -> dict[bool, int]:
    """The first dense (``False``) and first MoE (``True``) decoder layer, of those there are."""
    moe_layers = set(spec.moe.layers) if spec.moe is not None else set()
    out: dict[bool, int] = {}
    for is_moe in (False, True):
        rep = next((i for i in range(spec.num_layers) if (i in moe_layers) == is_moe), None)
        if rep is not None:
            out[is_moe] = rep
    return out


def layer_gradient_kind_bytes(spec: ModelSpec, setup: Setup) -> dict[bool, int]:
    """Gradient bytes of one trainable decoder layer, dense (``False``) and MoE (``True``):
    full/freeze the layer in the master dtype; LoRA its fp32 adapters."""
    d = policy_of(setup)
    per_kind: dict[bool, int] = {}
    for is_moe, rep in kind_representatives(spec).items():
        if setup.is_lora:
            r = setup.lora_rank
            n = sum(lin.count * r * (lin.in_features + lin.out_features) for lin in lora_linears(spec, setup, rep))
            n += param_target_params(spec.layer_linears(rep), setup)
            per_kind[is_moe] = nbytes(n, d.adapter)
        else:
            per_kind[is_moe] = nbytes(layer_params(spec, rep), d.master)
    return per_kind


def layer_gradient_bytes(spec: ModelSpec, setup: Setup) -> list[int]:
    """Gradient bytes of each decoder layer's trainable parameters (full/freeze: the layer in
    the master dtype; LoRA: its fp32 adapters)."""
    moe_layers = set(spec.moe.layers) if spec.moe is not None else set()
    trained = set(trainable_layers(spec, setup))
    per_kind = layer_gradient_kind_bytes(spec, setup)
    return [per_kind[i in moe_layers] if setup.is_lora or i in trained else 0 for i in range(spec.num_layers)]


def embedding_gradient_bytes(spec: ModelSpec, setup: Setup) -> int:
    """The input embedding's gradient, written last in backward (full, or an extra module)."""
    n = spec.vocab_size * spec.hidden_size
    if setup.method == "full" and not spec.tie_word_embeddings:
        return nbytes(n, _head_master(setup))
    if setup.is_lora and "embeddings" in setup.trainable_extra:
        return nbytes(n, policy_of(setup).extra_trainable)
    return 0


def tied_embedding_backward_bytes(spec: ModelSpec, setup: Setup) -> int:
    """A trained, tied embedding gets two gradients: lm_head's (the ``mm`` in its backward)
    and the lookup's (``embedding_dense_backward``, V x h). torch's ``AccumulateGrad`` adds
    them out of place, so for a moment the first grad, the second and their sum are all alive:
    2·V·h beyond the gradient itself, in the gradient's dtype."""
    if setup.method != "full" or not spec.tie_word_embeddings:
        return 0
    return 2 * nbytes(spec.vocab_size * spec.hidden_size, _head_master(setup))


def _head_master(setup: Setup) -> str:
    """The dtype full fine-tuning trains the embedding and lm_head in."""
    p = policy_of(setup)
    return p.upcast_modules or p.master


def optimizer_state_bytes(spec: ModelSpec, setup: Setup) -> int:
    """Optimizer state for the trainable elements.

    - adamw, adamw-fused, paged-adamw-32bit: exp_avg and exp_avg_sq, each in the param's
      dtype (torch ``AdamW``: ``torch.zeros_like(p)``) — 8 B/param for fp32 masters.
    - adamw-8bit, paged-adamw-8bit: two uint8 states plus one fp32 absmax per 256 values
      (bitsandbytes ``Optimizer2State``).
    - lion: one momentum buffer in the param dtype.
    - adafactor (transformers ``Adafactor``, no first moment by default): factored second
      moment, one fp32 per row and per column of each matrix (approximated as
      2·sqrt(numel) per matrix-sized slice: exact for square, under for skinny; bounded
      below by 1% of the elements).
    - sgd (momentum 0, the default): nothing.
    """
    opt = setup.optimizer
    total = 0
    for n, dt in _by_dtype(spec, setup):
        if n == 0:
            continue
        if opt in ("adamw", "adamw-fused", "paged-adamw-32bit"):
            total += 2 * nbytes(n, dt)
        elif opt == "lion":
            total += nbytes(n, dt)
    if opt in ("adamw-8bit", "paged-adamw-8bit"):
        total += _bnb_8bit_state_bytes(spec, setup)
    elif opt == "adafactor":
        total += _adafactor_state_bytes(spec, setup)
    return total


def _bnb_8bit_state_bytes(spec: ModelSpec, setup: Setup) -> int:
    """bitsandbytes ``Optimizer2State``: tensors of at least ``min_8bit_size`` (4096)
    elements keep two uint8 moments plus one fp32 absmax per 256-block each; smaller ones
    keep two fp32 moments."""
    total = 0
    for shape, k in trainable_shapes(spec, setup):
        n = math.prod(shape)
        if n >= BNB_MIN_8BIT_SIZE:
            total += k * 2 * (nbytes(n, "uint8") + nbytes(-(-n // BNB_OPTIM_BLOCK), "fp32"))
        else:
            total += k * 2 * nbytes(n, "fp32")
    return total


def _adafactor_state_bytes(spec: ModelSpec, setup: Setup) -> int:
    """transformers ``Adafactor`` (beta1=None, no first moment): a tensor with 2+ dims keeps
    fp32 ``exp_avg_sq_row`` (shape[:-1]) and ``exp_avg_sq_col`` (shape[:-2] + shape[-1:]);
    a vector keeps a full fp32 ``exp_avg_sq``."""
    total = 0
    for shape, k in trainable_shapes(spec, setup):
        if len(shape) >= 2:
            total += k * nbytes(math.prod(shape[:-1]) + math.prod(shape[:-2]) * shape[-1], "fp32")
        else:
            total += k * nbytes(math.prod(shape), "fp32")
    return total


def optimizer_step_temp_bytes(spec: ModelSpec, setup: Setup) -> int:
    """Temporaries alive inside ``optimizer.step()``.

    - adamw (torch foreach ``_multi_tensor_adamw``): ``torch._foreach_sqrt(exp_avg_sqs)``
      materialises a copy of all second moments of a param group: one state-sized copy.
    - adamw-fused (``_fused_adamw_``): none.
    - bitsandbytes 8-bit / paged, lion: per-tensor kernels, no full-size temporaries.
    - adafactor (transformers ``Adafactor.step``, one parameter at a time): for the largest
      trainable tensor, fp32 ``grad.float()`` and ``p.float()`` copies (16-bit params only),
      the ``update`` and, in ``p_data_fp32.add_(-update)``, its negation: four fp32 copies for
      16-bit params, two for fp32 ones.
    - sgd: in place.
    """
    opt = setup.optimizer
    if opt == "adamw":
        return sum(nbytes(n, dt) for n, dt in _by_dtype(spec, setup))
    if opt == "adafactor":
        copies = 2 if all(dt == "fp32" for n, dt in _by_dtype(spec, setup) if n) else 4
        return copies * nbytes(largest_trainable_tensor(spec, setup), "fp32")
    return 0


def paged_optimizer(setup: Setup) -> bool:
    """Paged optimizers keep state in CUDA unified memory: outside torch's allocator (not in
    ``max_memory_allocated``), counted in the device tier."""
    return setup.optimizer.startswith("paged-")
