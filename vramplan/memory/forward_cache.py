"""What a checkpointed forward leaves cached beside the loss chain: the reserved tier's share of
the layers' own temporaries.

Under gradient checkpointing each decoder layer's forward runs without saving its intermediates:
they are made and freed inside the layer, and only its output (the next layer's checkpoint)
stays. torch's caching allocator keeps the freed blocks cached for the next layer (same sizes,
reused) and never returns them while the card has room (c10/cuda/CUDACachingAllocator.cpp:
``release_cached_blocks`` only when a ``cudaMalloc`` fails). After the last layer the loss chain
asks for blocks of t·V elements (the logits, their fp32 copy, the log-softmax and its backward
buffers, memory/loss.py), larger than any one of the layer's blocks (t·I at most), so best fit
(``get_free_block``) finds none of them large enough and the chain takes segments of its own:
at the start of backward the layers' cached blocks sit beside the chain, reserved, not
allocated. Their size is the most one layer's forward holds at once beyond its output: the MLP's
intermediates (3·A·t·I: the gate and up outputs and the activation,
:func:`activations.mlp_bytes` without a trained weight), or, with LoRA dropout, what stands at
``down_proj``'s adapter (the product, its cast to the adapters' dtype, the dropout output and
the residual frames: :func:`activations.recomputed_down_adapter_bytes`, the same moment in the
recomputation).

Replayed on traced steps (benchmarks/allocator_replay.py, two steps through the allocator's
rules): Qwen2.5-7B LoRA at 16,384 tokens holds 55.35 GiB reserved against 45.54 allocated, the
chain's own cached block (``overhead/logits_segment``, 4.64) and about 5.9 of the layers'
segments at the start of backward; Mistral-7B QLoRA at 8 x 4,096 tokens (fms-acceleration's
benchmark, fms-a100-r60) 46.65 against 35.06, each early layer's 1.75 GiB fp32 MLP products
taking a new segment that the next layer's checkpoint then splits (``--row fms-a100-r60``); the
card read 44.97 GiB. The layers' blocks are wholly free when the chain needs room, and torch frees
wholly free segments and retries before it raises out-of-memory: the term is on the reserved and
device tiers and not in what the card must offer (``needed_bytes``). The replays' least card
(segments holding a live block) is 47.07 GiB against 45.54 allocated at 16,384 tokens, 38.75
against 35.06 at r60, where the split segments hold checkpoints. Its split remainders (the checkpoints placed in the
layers' segments) are not counted: the replays show 0..3 GiB of them. The fitted slack
(overhead.py, about 1 GiB) already holds the layers' blocks of the runs it was fitted on, so the
term is what they exceed it by (:func:`beyond_slack`): Qwen2.5-7B LoRA at 16,384 tokens plans
53.6 GiB reserved against the replay's 55.35 (51.2 without the term); at 2,048 tokens nothing
is added (ms-swift's benchmark of Qwen at 512..2048 tokens, tables/measured/lengths_runs.csv,
sits at +4..+10% already).

Not counted under FSDP, whose per-stream caches (fsdp.py) are modelled on their own, nor
without checkpointing, where the intermediates are saved (allocated) rather than freed, nor
where the loss makes no t·V block (TRL's fused head) or the chain's block is no larger than the
layer's (the chain then reuses the cached blocks).
"""

from __future__ import annotations

from collections.abc import Mapping

from vramplan.memory import activations, lengths
from vramplan.memory.policy import policy_of
from vramplan.results import Estimate, Note
from vramplan.setup import Setup
from vramplan.spec import ModelSpec
from vramplan.units import nbytes

TERM = "overhead/forward_segments"


def layer_forward_bytes(spec: ModelSpec, setup: Setup) -> int:
    """The most one checkpointed layer's forward holds at once beyond its output (0 without
    checkpointing or with no layer recorded)."""
    if not setup.grad_checkpointing or not len(activations.saving_layers(spec, setup)):
        return 0
    layer = next((i for i in range(spec.num_layers) if spec.moe is None or i not in spec.moe.layers), 0)
    mlp = activations.mlp_bytes(spec, setup, layer, False)
    if spec.moe is not None and spec.moe.layers:
        mlp = max(mlp, activations.mlp_bytes(spec, setup, spec.moe.layers[0], False))
    return max(mlp, activations.recomputed_down_adapter_bytes(spec, setup))


def largest_layer_block(spec: ModelSpec, setup: Setup) -> int:
    """The largest single block a layer's forward makes: an MLP intermediate (A·t·I), or its
    copy in the adapters' dtype at a LoRA on ``down_proj``."""
    t, inter = setup.tokens, activations.widest_intermediate(spec)
    block = nbytes(t * inter, policy_of(setup).pointwise)
    if setup.is_lora:
        block = max(block, nbytes(t * inter, policy_of(setup).adapter))
    return block


def beyond_slack(layers: int, terms: Mapping[str, int]) -> int:
    """What the layers' blocks add beyond the fitted slack (``overhead/allocator_slack``): the
    slack is measured on published runs (overhead.py), most of them checkpointed at a few thousand
    tokens, whose layers' blocks (well under a GiB) it already holds; counting both would count
    them twice. So the reserved tier carries the larger of the two."""
    return max(0, layers - terms.get("overhead/allocator_slack", 0))


def forward_segments_bytes(spec: ModelSpec, setup: Setup, backward_start: Mapping[str, int]) -> int:
    """The layers' cached blocks beside the loss chain at the start of backward (the module
    docstring), 0 where they are not left aside."""
    chain = backward_start.get("loss/log_softmax", 0)
    if not chain or setup.parallel == "fsdp":
        return 0
    if chain <= largest_layer_block(spec, setup):
        return 0
    return layer_forward_bytes(spec, setup)


#: below this the cached blocks are left to the tiers without a note (the fitted slack is about 1 GiB)
NOTE_FROM = 1 << 30


def forward_segments_note(est: Estimate, memory_bytes: int) -> Note | None:
    """``memory.forward_segments``: the layers' cached blocks make nvidia-smi read more than the run
    needs; say both (None below :data:`NOTE_FROM`, unless they take the reading past the card)."""
    cached = est.terms.get(TERM, 0)
    if not cached or (cached < NOTE_FROM and est.device_bytes <= memory_bytes):
        return None
    lead = "the checkpointed layers' freed blocks stay cached beside the loss chain, which is too large to reuse them"
    return lengths.cached_note(
        est, memory_bytes, TERM, "forward_segments_bytes", "memory.forward_segments", lead, "the cached blocks"
    )
