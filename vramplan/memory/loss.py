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
"""

from __future__ import annotations

from vramplan.memory.policy import act_bytes
from vramplan.setup import Setup
from vramplan.spec import ModelSpec


def softcap_bytes(spec: ModelSpec, setup: Setup) -> int:
    """Gemma-2 final logit soft-capping, ``tanh(logits / cap) * cap``: ``tanh`` saves its
    output for backward, A·t·V alive at the start of backward; 0 for other models."""
    return act_bytes(setup) * setup.tokens * spec.vocab_size if spec.final_logit_softcapping else 0


def log_softmax_bytes(spec: ModelSpec, setup: Setup) -> int:
    """fp32 log-softmax output saved by ``cross_entropy``: 4·t·V."""
    return 4 * setup.tokens * spec.vocab_size


def loss_backward_temp_bytes(spec: ModelSpec, setup: Setup) -> int:
    """``nll_loss_backward`` grad plus ``log_softmax_backward`` result: 2·4·t·V."""
    return 8 * setup.tokens * spec.vocab_size


def forward_chain_bytes(spec: ModelSpec, setup: Setup) -> int:
    """The chain at the end of forward: logits (A·t·V), their ``.float()`` copy (4·t·V, none
    when the logits are already fp32) and the log-softmax (4·t·V)."""
    t, v, A = setup.tokens, spec.vocab_size, act_bytes(setup)
    return A * t * v + (4 * t * v if A < 4 else 0) + 4 * t * v


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
    it in the device tier all the same, erring on the side of not fitting."""
    a = act_bytes(setup)
    return a * setup.tokens * spec.vocab_size if a < 4 else 0
