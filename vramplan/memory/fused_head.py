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


def forward_bytes(spec: ModelSpec, setup: Setup, n: int) -> int:
    """Hidden states of the scored positions (saved for backward, in the residual stream's
    dtype), their fp32 statistics, one projection tile, and the chunk's 16-bit weight copy
    when lm_head is fp32."""
    a = act_bytes(setup)
    chunk = min(spec.vocab_size, VOCAB_CHUNK) * spec.hidden_size * a if head_fp32(setup) else 0
    return n * spec.hidden_size * residual_bytes(setup) + STAT_VECTORS * 4 * n + tile_bytes(spec, setup, n) + chunk


def backward_bytes(spec: ModelSpec, setup: Setup, n: int) -> int:
    """The backward's fp32 gradient of the hidden states and its cast back, its tile (the
    forward's is freed by then, so it is not counted twice), and, when lm_head trains, an
    fp32 gradient of its weight plus its cast to the weight's dtype."""
    head_trains = setup.method == "full" or "lm_head" in setup.trainable_extra
    vh = spec.vocab_size * spec.hidden_size
    weight_grad = (4 + (0 if head_fp32(setup) else 2)) * vh if head_trains else 0
    return (4 + residual_bytes(setup)) * n * spec.hidden_size + tile_bytes(spec, setup, n) + weight_grad


def in_phases(spec: ModelSpec, setup: Setup, phases: dict[str, dict[str, int]], n: int) -> dict[str, dict[str, int]]:
    """``phases`` (phases.phase_terms) with the fused head in place of the logits chain: its
    forward at the end of forward; at the start of backward its saved part (the forward's tile
    is freed before the backward allocates its own) beside its backward."""
    out: dict[str, dict[str, int]] = {}
    for name, terms in phases.items():
        t = {k: v for k, v in terms.items() if not k.startswith("loss/")}
        if name == "forward_end":
            t["loss/fused_head"] = forward_bytes(spec, setup, n)
        elif name == "backward_start":
            t["loss/fused_head"] = forward_bytes(spec, setup, n) - tile_bytes(spec, setup, n)
            t["loss/fused_head_backward"] = backward_bytes(spec, setup, n)
        out[name] = t
    return out
