"""TRL's fused LM head: per-token log-probabilities without the ``tokens x vocab`` logits.

TRL 1.16 (``trl/trainer/utils.py`` ``add_fused_lm_head``, ``trl/kernels/chunked_logprob.py``
``ChunkedLogProbFunction``) patches the model's forward: with ``fused_lm_head=True`` it runs the
backbone, selects the scored positions' hidden states (on CUDA ``hidden_states[mask]``, the
positions whose next-token label is not -100: a copy, saved for backward, in the residual
stream's dtype), and projects them through ``lm_head.weight`` one ``min(N, 4096) x 32768`` tile
at a time, folding each tile into per-token fp32 statistics (running max, sums, target logit,
...). Its backward recomputes each tile, turns it into the logits gradient in place and
accumulates an fp32 gradient of the hidden states (and of lm_head's weight when it trains).

Used by GRPO (rl.py: the completion positions) and by SFT (loss chain ``fused_head``,
:attr:`vramplan.policy.Policy.loss_chain`: every position but each sample's last). ``n`` is the
number of scored positions in one micro-batch.
"""

from __future__ import annotations

from vramplan.memory.policy import act_bytes, policy_of, residual_bytes, upcast_kbit
from vramplan.setup import Setup
from vramplan.spec import ModelSpec

#: trl/kernels/chunked_logprob.py: tokens and vocabulary entries per projection tile.
TOKEN_CHUNK = 4096
VOCAB_CHUNK = 32768
#: per-token fp32 statistics the fused forward keeps (running max, sums, target logit, ...).
STAT_VECTORS = 7


def head_fp32(setup: Setup) -> bool:
    """lm_head's weight is fp32 (AMP masters, or after PEFT's k-bit upcast): each vocabulary
    chunk is cast to the 16-bit compute dtype on the fly."""
    return policy_of(setup).weights == "fp32" or upcast_kbit(setup)


def tile_bytes(spec: ModelSpec, setup: Setup, n: int) -> int:
    """The projection buffer each pass allocates: ``min(n, 4096) x chunk_size`` in the compute
    dtype, 32768 columns even when the vocabulary is smaller (the last chunk uses a slice)."""
    return min(n, TOKEN_CHUNK) * VOCAB_CHUNK * act_bytes(setup)


def chunk_copy_bytes(spec: ModelSpec, setup: Setup) -> int:
    """One vocabulary chunk of an fp32 lm_head cast to the compute dtype
    (``weight[start:end].to(compute_dtype)``); 0 when lm_head already is 16-bit."""
    return min(spec.vocab_size, VOCAB_CHUNK) * spec.hidden_size * act_bytes(setup) if head_fp32(setup) else 0


def saved_bytes(spec: ModelSpec, setup: Setup, n: int) -> int:
    """What the forward leaves for backward: the scored positions' hidden states (in the
    residual stream's dtype) and their fp32 statistics."""
    return n * spec.hidden_size * residual_bytes(setup) + STAT_VECTORS * 4 * n


def forward_bytes(spec: ModelSpec, setup: Setup, n: int) -> int:
    """The forward at work: what it saves, one projection tile, and the chunk's 16-bit weight
    copy when lm_head is fp32 (made for one ``mm`` and freed)."""
    return saved_bytes(spec, setup, n) + tile_bytes(spec, setup, n) + chunk_copy_bytes(spec, setup)


def backward_bytes(spec: ModelSpec, setup: Setup, n: int, *, chunks: bool = True) -> int:
    """The backward's fp32 gradient of the hidden states and its cast back, its own tile,
    and, when lm_head is fp32, two chunk copies (``w_chunk`` of the last chunk is still held
    while the next one is cast: with more than one chunk); when lm_head trains, an fp32
    gradient of its weight plus its cast to the weight's dtype. ``chunks=False``: without the
    chunk copies (GRPO's recorded form, see :func:`in_phases`)."""
    head_trains = setup.method == "full" or "lm_head" in setup.trainable_extra
    vh = spec.vocab_size * spec.hidden_size
    weight_grad = (4 + (0 if head_fp32(setup) else 2)) * vh if head_trains else 0
    copies = (2 if spec.vocab_size > VOCAB_CHUNK else 1) * chunk_copy_bytes(spec, setup) if chunks else 0
    hidden = (4 + residual_bytes(setup)) * n * spec.hidden_size
    return hidden + tile_bytes(spec, setup, n) + copies + weight_grad


def in_phases(
    spec: ModelSpec, setup: Setup, phases: dict[str, dict[str, int]], n: int, *, grpo: bool = False
) -> dict[str, dict[str, int]]:
    """``phases`` (phases.phase_terms) with the fused head in place of the logits chain: its
    forward at the end of forward; at the start of backward what it saved beside its backward.

    ``grpo``: the form GRPO's estimates were recorded with (rl.py), which counts the forward's
    chunk copy at the start of backward instead of the backward's own two; the same for a
    16-bit lm_head, one chunk lower with an fp32 one (AMP, QLoRA). SFT's trace
    (tests/test_trl_trace.py) measured the two copies; GRPO's trace covers 16-bit heads only."""
    out: dict[str, dict[str, int]] = {}
    for name, terms in phases.items():
        t = {k: v for k, v in terms.items() if not k.startswith("loss/")}
        if name == "forward_end":
            t["loss/fused_head"] = forward_bytes(spec, setup, n)
        elif name == "backward_start":  # the forward's tile and chunk copy are freed by then
            kept = saved_bytes(spec, setup, n) + (chunk_copy_bytes(spec, setup) if grpo else 0)
            t["loss/fused_head"] = kept
            t["loss/fused_head_backward"] = backward_bytes(spec, setup, n, chunks=not grpo)
        out[name] = t
    return out
