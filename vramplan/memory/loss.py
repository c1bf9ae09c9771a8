"""The loss chain: logits over the whole vocabulary and the cross-entropy around them.

transformers ``ForCausalLMLoss``: ``logits = lm_head(h)`` (A·t·V), ``logits.float()``
(4·t·V), ``cross_entropy`` = ``log_softmax`` (4·t·V, saved for backward) + ``nll_loss``.
The trainer keeps only the loss: the model output (and accelerate's fp32 copy of the
logits under mixed precision) is dropped before ``backward()``, so forward ends at
(A + 8)·t·V. At the start of backward ``nll_loss_backward`` writes a 4·t·V grad and
``log_softmax_backward`` another 4·t·V beside the saved log-softmax: 12·t·V, the chain's
peak, and the peak of the whole step for most LoRA/QLoRA runs.

The caching allocator adds one block to that on the reserved tier: the 16-bit logits' block
freed at the end of forward stays cached, and backward's fp32 buffers, twice its size,
cannot use it (``logits_segment_bytes``).

A family whose own forward takes the loss without ``.float()`` (``ModelSpec.loss_without_upcast``:
Qwen v1 and Qwen-VL, modeling_qwen.py ``QWenLMHeadModel.forward``) runs
``CrossEntropyLoss()(lm_logits[..., :-1, :].contiguous().view(-1, V), ...)``: a 16-bit copy of the
shifted logits, t' = b·(s - 1) rows, beside the logits, and a log-softmax in whatever dtype the
op runs in (``chain_bytes``): fp32 where autocast wraps the forward, the logits' own dtype where
nothing does. The log-softmax, ``nll_loss_backward``'s grad and
``log_softmax_backward``'s result are then c·t'·V each (c: ``chain_bytes``; an fp16 log-softmax
under autocast gives back an fp16 grad, below).
"""

from __future__ import annotations

from vramplan.memory.policy import act_bytes, policy_of
from vramplan.setup import Setup
from vramplan.spec import ModelSpec


def softcap_bytes(spec: ModelSpec, setup: Setup) -> int:
    """Gemma-2 final logit soft-capping, ``tanh(logits / cap) * cap``: ``tanh`` saves its
    output for backward, A·t·V alive at the start of backward; 0 for other models."""
    return act_bytes(setup) * setup.tokens * spec.vocab_size if spec.final_logit_softcapping else 0


def loss_autocast(setup: Setup) -> bool:
    """Autocast wraps the forward that takes the loss: the trainer's mixed precision
    (``Policy.autocast``: accelerate ``Accelerator.prepare_model`` wraps ``model.forward`` in
    ``torch.autocast``).

    Not yet counted: under DeepSpeed accelerate sets no native AMP (accelerate
    ``Accelerator.__init__``: ``native_amp`` only for a ``distributed_type`` other than DEEPSPEED;
    transformers ``Trainer.__init__``: "deepspeed ... manage their own half precision"), so there a
    loss with no upcast runs in 16 bits. ``Policy.autocast`` does not say so yet, and the rows that
    would move (Qwen's README Q-LoRA runs under ZeRO-2) also lack DeepSpeed's own buffers: until
    both are counted the chain stays the fp32 one, the larger."""
    return policy_of(setup).autocast


def chain_bytes(spec: ModelSpec, setup: Setup) -> int:
    """Bytes per element of the log-softmax and ``nll_loss_backward``'s grad: 4 when the loss
    upcasts the logits itself (transformers ``ForCausalLMLoss``: ``logits.float()``), or when autocast
    runs around a loss that does not (CUDA autocast casts ``log_softmax`` to fp32: ATen
    autocast_mode.h ``AT_FORALL_FP32_SET_OPT_DTYPE``); else the logits' own dtype (A)."""
    a = act_bytes(setup)
    if not spec.loss_without_upcast or a >= 4 or loss_autocast(setup):
        return 4
    return a


def _fused_half(spec: ModelSpec, setup: Setup) -> bool:
    """An fp16 log-softmax under autocast on a loss with no ``.float()``: ATen SoftMax.cpp
    ``log_softmax(input, dim, dtype)`` takes the fused ``half_to_float`` kernel for a CUDA Half input
    (no fp32 copy of the input), whose backward (``_log_softmax_backward_data(..., input_dtype)``)
    returns fp16. A bf16 input is converted first (``input_.toType(dtype)``): an fp32 copy, and an
    fp32 backward result."""
    return spec.loss_without_upcast and chain_bytes(spec, setup) == 4 and policy_of(setup).activations == "fp16"


def scored_tokens(spec: ModelSpec, setup: Setup) -> int:
    """Rows of the log-softmax: every position (transformers shifts the labels, not the logits),
    or b·(s - 1) for a loss on the shifted logits' copy."""
    return setup.tokens - setup.micro_batch if spec.loss_without_upcast else setup.tokens


def log_softmax_bytes(spec: ModelSpec, setup: Setup) -> int:
    """The log-softmax output saved by ``cross_entropy``: 4·t·V (c·t'·V for a loss with no upcast)."""
    return chain_bytes(spec, setup) * scored_tokens(spec, setup) * spec.vocab_size


def loss_backward_temp_bytes(spec: ModelSpec, setup: Setup) -> int:
    """``nll_loss_backward`` grad plus ``log_softmax_backward`` result: 2·4·t·V (2·c·t'·V for a loss
    with no upcast; (4 + 2)·t'·V for fp16 under autocast, whose backward result is fp16)."""
    grad = chain_bytes(spec, setup)
    result = 2 if _fused_half(spec, setup) else grad
    return (grad + result) * scored_tokens(spec, setup) * spec.vocab_size


def forward_chain_bytes(spec: ModelSpec, setup: Setup) -> int:
    """The chain at the end of forward: logits (A·t·V), their ``.float()`` copy (4·t·V, none
    when the logits are already fp32) and the log-softmax (4·t·V). A loss with no upcast holds the
    logits (A·t·V), their shifted copy (A·t'·V), autocast's fp32 copy of it (4·t'·V, alive while the
    log-softmax is written; none in fp32, fp16 or without autocast) and the log-softmax (c·t'·V)."""
    t, v, A = setup.tokens, spec.vocab_size, act_bytes(setup)
    if not spec.loss_without_upcast:
        return A * t * v + (4 * t * v if A < 4 else 0) + 4 * t * v
    c, ts = chain_bytes(spec, setup), scored_tokens(spec, setup)
    cast = 4 if c > A and not _fused_half(spec, setup) else 0
    return A * t * v + (A + cast + c) * ts * v


def logits_segment_bytes(spec: ModelSpec, setup: Setup) -> int:
    """Reserved beyond allocated at the start of backward: A·t·V, the 16-bit logits' block.

    torch's caching allocator gives every request above 10 MiB its own segment (rounded to
    2 MiB) and never merges segments. Forward takes one for the logits (A·t·V), one for their
    ``.float()`` copy and one for the log-softmax (4·t·V each); at its end the logits and the
    copy are freed but stay cached. Backward's ``nll_loss_backward`` grad (4·t·V) reuses the
    copy's block; ``log_softmax_backward``'s result (4·t·V) fits no free block, since the
    logits' is half its size, and gets a new segment. So at the chain's peak, 12·t·V
    allocated, the allocator holds 14·t·V (CUDACachingAllocator.cpp: ``get_allocation_size``,
    best-fit ``get_free_block``, no cross-segment merge; the default without
    ``expandable_segments``). The block is reused later by the logits' bf16 gradient, and from
    the second step on the same segments serve the same requests. 0 when the logits are
    already fp32 (no ``.float()`` copy: the freed logits' block is a full-size one).
    Checked by replaying traced steps through the allocator's rules (trace/allocator.py,
    tests/test_allocator.py). The block is a whole free segment: on a card too full for the
    new one, torch releases such segments and retries before it raises out-of-memory, so it
    is what ``max_memory_reserved`` shows rather than what fails a tight run; the plan keeps
    it in the device tier all the same, erring on the side of not fitting.

    A loss with no upcast (``ModelSpec.loss_without_upcast``): under autocast in bf16 both 16-bit
    blocks, the logits' and their shifted copy's (A·t·V + A·t'·V), stay cached beside the fp32
    chain, which fits neither; in fp16 under autocast the fp16 backward result takes the shifted
    copy's block, leaving the logits' (A·t·V); in the logits' own dtype the two backward buffers
    take the two freed blocks: 0. Checked by replaying the chain's requests through the same
    rules (tests/test_qwen_loss.py)."""
    a = act_bytes(setup)
    if not spec.loss_without_upcast:
        return a * setup.tokens * spec.vocab_size if a < 4 else 0
    if chain_bytes(spec, setup) == a:
        return 0
    shifted = 0 if _fused_half(spec, setup) else a * scored_tokens(spec, setup) * spec.vocab_size
    return a * setup.tokens * spec.vocab_size + shifted
