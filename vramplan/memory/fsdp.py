"""FSDP1's caching-allocator pools: what ``max_memory_reserved`` (and nvidia-smi) holds beyond
the allocated peak when ``FullyShardedDataParallel`` (FSDP1) shards over more than one rank.

FSDP1 is what HF Trainer and accelerate run by default: accelerate's
``FullyShardedDataParallelPlugin.fsdp_version`` is 1 unless ``FSDP_VERSION`` says otherwise
(accelerate 1.16 ``utils/dataclasses.py`` ``__post_init__``; accelerate 1.0.1, which the fms rows
ran, has FSDP1 only). The plan assumes FSDP1 for ``--parallel fsdp`` on these tiers; its
allocated tier (``parallel.fsdp_phases``, traced on FSDP2 and matching FSDP1's measured peak) is
unchanged. FSDP2 (``fully_shard``) also makes its sharded gradients on a stream of its own
(torch 2.13 ``_fully_shard/_fsdp_collectives.py`` ``foreach_reduce``: ``reduce_output`` under
``device_handle.stream(reduce_scatter_stream)``, the gradients views of it), so the pools below
are not FSDP1's alone; no FSDP2 run with nvidia-smi or ``max_memory_reserved`` is at hand to
hold them against.

torch's caching allocator keeps one cache per stream: "Allocations are associated with a stream.
Once freed, blocks can be re-allocated on the same stream, but not on any other stream"
(c10/cuda/CUDACachingAllocator.cpp, header comment, the same from torch 2.1 to today). FSDP1
allocates on three streams (torch/distributed/fsdp/_runtime_utils.py at torch 2.4, unchanged in
FSDP1 since):

- the unshard stream: ``_unshard`` runs ``handle.unshard()`` under
  ``state._device_handle.stream(unshard_stream)``, so each unit's padded unsharded flat
  parameter (``_flat_param.py`` ``_alloc_padded_unsharded_flat_param``: ``_alloc_storage``)
  comes from that stream's pool; its peak is the most ever gathered (``parallel/gathered_weights``
  at its largest phase), whatever the other phases hold;
- the post-backward stream: ``_post_backward_hook`` reduce-scatters under
  ``state._device_handle.stream(state._post_backward_stream)``, where
  ``_get_reduce_scatter_tensors`` makes ``new_sharded_grad = torch.empty_like(chunks[0])``; it
  becomes ``_saved_grad_shard`` and then ``flat_param.grad`` (``prepare_gradient_for_optim``),
  so every sharded gradient lives in that pool until ``zero_grad`` frees it, and the next
  backward's reduce-scatter outputs reuse it: the pool holds the sharded gradients (the
  optimizer step's ``gradients``) through the activation peak, where a single-stream run would
  have handed those blocks to activations;
- the default (compute) stream: activations, the loss chain, autograd's unsharded gradients
  (recorded on the post-backward stream by ``_no_dispatch_record_stream(autograd_computed_grad,
  ...)``, so not reusable until the reduce-scatter's event completes) and the optimizer step.

So, per rank, reserved = P + G + U + C + T rather than the largest phase: P the persistent
sharded weights and optimizer state, G the sharded gradients (post-backward pool), U the most
gathered (unshard pool), C the compute stream's most at any point of forward or backward (the
cached logits' block included, ``loss.logits_segment_bytes``), T the optimizer step's
temporaries. T lies beside C, not inside it: AdamW makes its state at the first step
(torch 2.4 ``optim/adamw.py`` ``_init_group``: ``exp_avg``/``exp_avg_sq`` ``zeros_like`` each
parameter; the same calls in ``optim/adam.py`` at torch 2.13),
inside the segments the first backward's activations left cached, so from the second step the
activations' large blocks fit none of the holes the step's temporaries
(``_multi_tensor_adamw``: ``torch._foreach_sqrt(device_exp_avg_sqs)``) leave, and take new
segments. Replayed through the allocator's rules with one cache per stream
(benchmarks/fsdp1_pools_replay.py, FSDP1's order for rank 0 of Mistral-7B at 2 ranks): 40.3 and
48.7 GiB reserved at micro-batch 2 and 4 (one stream for the same order: 38.7 and 43.0; the
state made before the first step: 35.9 and 42.3), against 43.34 and 52.33 GiB on nvidia-smi
(fms-a100-r11/r13). The sum here is within 5% of the replay; the replay's further fragmentation
at micro-batch 4 (3.5 GiB) is not counted. The measured rows are held in tests/test_fsdp_pools.py.

The pools are cache torch gives back: a cudaMalloc that fails first frees every wholly free
segment of every stream and retries (``release_cached_blocks``), and in the replay the segments
holding a live block never exceed the allocated peak by more than 1.1 GiB (34.50 / 34.76 GiB at
micro-batch 2 / 4 against 33.72), so the term is on the reserved and device tiers (what nvidia-smi
reads) and not in ``needed_bytes`` (what the card must offer), which the verdict weighs.

Under gradient accumulation the gradients of the no_sync micro-batches are whole and on the
compute stream: none is taken out of C. With one shard FSDP1 runs NO_SHARD (no all-gather, the
gradient all-reduced in place): no term. Offloaded (``optimizer+params``) gradients and state are
on the host: G and T are 0 as the terms say.
"""

from __future__ import annotations

from collections.abc import Mapping

from vramplan.memory import lengths
from vramplan.results import Estimate, Note
from vramplan.setup import Setup

#: the training step's phases FSDP's terms have (parallel.fsdp_phases); run phases (load, save,
#: evaluation) come and go outside the step's pools
STEP_PHASES = ("forward_end", "backward_start", "forward_layer", "backward")
TERM = "overhead/fsdp_stream_pools"


def _persistent(terms: Mapping[str, int]) -> int:
    """Sharded weights, optimizer state and workspaces: alive in every phase."""
    return sum(
        v
        for k, v in terms.items()
        if k.startswith(("weights/", "optimizer/", "overhead/"))
        and k not in ("weights/autocast_copies", "optimizer/step_temporaries")
    )


def stream_pools_bytes(
    setup: Setup, per_phase: Mapping[str, Mapping[str, int]], held: int, logits_segment: int = 0
) -> int:
    """Reserved beyond ``held`` (the allocated peak plus the cached logits' block the plan already
    counts) that FSDP1's per-stream pools keep (module docstring): ``P + G + U + C + T - held``,
    at least 0. ``logits_segment``: the 16-bit logits' cached block beside the loss chain at the
    start of backward (loss.py), part of C there."""
    if setup.parallel != "fsdp" or setup.shard_count <= 1 or "forward_layer" not in per_phase:
        return 0
    step = per_phase["optimizer_step"]
    p = _persistent(step)
    g = step.get("gradients", 0)
    t = step.get("optimizer/step_temporaries", 0)
    u = max(per_phase[name].get("parallel/gathered_weights", 0) for name in STEP_PHASES)
    acc = setup.grad_accum > 1
    c = 0
    for name in STEP_PHASES:
        terms = per_phase[name]
        compute = sum(terms.values()) - _persistent(terms) - terms.get("parallel/gathered_weights", 0)
        if not acc:  # the sharded gradients held at this point are the post-backward pool's
            compute -= min(terms.get("gradients", 0), g)
        if name == "backward_start" and terms.get("loss/log_softmax"):
            compute += logits_segment
        c = max(c, compute)
    return max(0, p + g + u + c + t - held)


def pools_note(est: Estimate, memory_bytes: int) -> Note:
    """``fsdp.stream_pools``: FSDP1's per-stream caches make nvidia-smi read more than the run
    needs; say both, and that the reading stops at the card (torch frees them before out-of-memory)."""
    lead = "FSDP keeps gradients and gathered layers in caches of their own streams"
    return lengths.cached_note(est, memory_bytes, TERM, "pools_bytes", "fsdp.stream_pools", lead, "the caches")
