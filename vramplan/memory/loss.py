"""The loss chain: logits over the whole vocabulary and the cross-entropy around them.

transformers ``ForCausalLMLoss``: ``logits = lm_head(h)`` (A·t·V, kept by the model
output), ``logits.float()`` (4·t·V, a forward temporary), ``cross_entropy`` =
``log_softmax`` (4·t·V, saved for backward) + ``nll_loss``. At the start of backward,
``nll_loss_backward`` writes a 4·t·V grad and ``log_softmax_backward`` another 4·t·V,
while the logits and the saved log-softmax are still alive: (A + 12)·t·V at the chain's
peak, which is the peak of the whole step for most LoRA/QLoRA runs.
"""

from __future__ import annotations

from vramplan.memory.policy import act_bytes
from vramplan.setup import Setup
from vramplan.spec import ModelSpec


def logits_bytes(spec: ModelSpec, setup: Setup) -> int:
    """lm_head output, in the activation dtype: A·t·V (Gemma-2 soft-capping saves its tanh
    output too: another A·t·V)."""
    n = act_bytes(setup) * setup.tokens * spec.vocab_size
    return 2 * n if spec.final_logit_softcapping else n


def log_softmax_bytes(spec: ModelSpec, setup: Setup) -> int:
    """fp32 log-softmax output saved by ``cross_entropy``: 4·t·V."""
    return 4 * setup.tokens * spec.vocab_size


def loss_backward_temp_bytes(spec: ModelSpec, setup: Setup) -> int:
    """``nll_loss_backward`` grad plus ``log_softmax_backward`` result: 2·4·t·V."""
    return 8 * setup.tokens * spec.vocab_size
