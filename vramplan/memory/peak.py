"""From live terms by phase to an Estimate: the peak phase and its three tiers, for one
process or card by card under ``device_map``. The training step (phases.py) and generation
(inference.py) both end here.

Tiers: ``allocated`` = the phase peak (torch ``max_memory_allocated``), ``reserved`` adds
the caching allocator's slack (``max_memory_reserved``; under sharded FSDP also its per-stream
pools, fsdp.py), ``device`` adds what lives outside
the allocator: the CUDA context and paged optimizer state (nvidia-smi).
"""

from __future__ import annotations

from vramplan.memory import device_map, forward_cache, fsdp, lengths, loss, optimizer, overhead
from vramplan.memory.trainable import trainable_params
from vramplan.params import param_counts
from vramplan.results import CardEstimate, Estimate
from vramplan.setup import Setup
from vramplan.spec import ModelSpec


def _peak(
    per_phase: dict[str, dict[str, int]], logits_segment: int = 0
) -> tuple[str, dict[str, int], int, int, dict[str, int]]:
    """The phase with the most allocated, its terms plus what the allocator holds beyond live
    tensors and the CUDA context, the allocated bytes, the reserved-minus-allocated bytes and
    every phase's total.

    Beyond live tensors the allocator holds its slack and, when the cross-entropy chain runs
    (``loss/log_softmax`` at the start of backward), the cached 16-bit logits' block
    ``logits_segment`` (loss.py) beside that phase: it raises the reserved peak by however
    far that phase plus the block exceeds the allocated peak."""
    totals = {name: sum(terms.values()) for name, terms in per_phase.items()}
    peak = max(per_phase, key=lambda p: totals[p])
    allocated = totals[peak]
    # vLLM's share is one budget it sizes itself: no caching-allocator slack on top of it
    slack = overhead.allocator_slack_bytes(allocated - per_phase[peak].get("rl/vllm_share", 0))
    chain = per_phase.get("backward_start", {})
    cached = max(0, totals["backward_start"] + logits_segment - allocated) if chain.get("loss/log_softmax") else 0
    terms = {k: v for k, v in per_phase[peak].items() if v}
    terms["overhead/allocator_slack"] = slack
    if cached:
        terms["overhead/logits_segment"] = cached
    terms["overhead/cuda_context"] = overhead.cuda_context_bytes()
    return peak, terms, allocated, slack + cached, totals


def peak_estimate(
    spec: ModelSpec, setup: Setup, per_phase: dict[str, dict[str, int]], llm: Setup | None = None
) -> Estimate:
    """The Estimate of one process from its terms by phase (paged optimizer state beside).
    ``llm`` is the language model's setup (its sequence holds the image tokens), which sizes
    the logits."""
    segment = loss.logits_segment_bytes(spec, llm or setup)
    peak, terms, allocated, slack, totals = _peak(per_phase, segment)
    # FSDP1's per-stream pools (fsdp.py): cache beyond the peak phase on the reserved tier
    pools = fsdp.stream_pools_bytes(setup, per_phase, allocated + terms.get("overhead/logits_segment", 0), segment)
    if pools:
        terms[fsdp.TERM] = pools
        slack += pools
    # the checkpointed layers' cached blocks beside the loss chain (forward_cache.py): reserved,
    # beyond the fitted slack and however far the start of backward sits below the peak
    start = per_phase.get("backward_start", {})
    layers = forward_cache.beyond_slack(forward_cache.forward_segments_bytes(spec, llm or setup, start), terms)
    held = allocated + terms.get("overhead/logits_segment", 0)
    cached = max(0, totals.get("backward_start", 0) + segment + layers - held) if layers else 0
    if cached:
        terms[forward_cache.TERM] = cached
        slack += cached
    if optimizer.paged_optimizer(setup):
        terms["optimizer/paged_state"] = optimizer.optimizer_state_bytes(spec, setup)
    est = Estimate(
        phase=peak,
        terms=terms,
        phases=totals,
        allocated_bytes=allocated,
        reserved_bytes=allocated + slack,
        device_bytes=sum(terms.values()),
        total_params=param_counts(spec).total,
        trainable_params=trainable_params(spec, setup),
    )
    est = lengths.with_lengths(est, llm or setup, per_phase.get("backward_start", {}))
    if pools or cached:  # torch frees wholly free segments before out-of-memory (fsdp.py, forward_cache.py)
        est = est.model_copy(update={"needed_bytes": est.needed_bytes - pools - cached})
    return est


def card_estimate(
    index: int, holds: str, layers: int, per_phase: dict[str, dict[str, int]], logits_segment: int = 0
) -> CardEstimate:
    """One card's peak over its phases, with its allocator slack and CUDA context (and the
    cached logits' block on the card that runs the loss)."""
    peak, terms, allocated, slack, _ = _peak(per_phase, logits_segment)
    return CardEstimate(
        index=index,
        holds=holds,
        layers=layers,
        phase=peak,
        terms=terms,
        allocated_bytes=allocated,
        reserved_bytes=allocated + slack,
        device_bytes=sum(terms.values()),
    )


def split_estimate(
    spec: ModelSpec, setup: Setup, per_phase: dict[str, dict[str, int]], llm: Setup | None = None
) -> Estimate:
    """``device_map``: the single-process terms divided card by card (device_map.py); the
    estimate is the fullest card's, with every card listed. ``llm`` is the language model's
    setup (its sequence holds the image tokens), which sizes each card's activations."""
    shares = device_map.shares(spec, llm or setup, device_map.placement(spec, setup))
    paged = optimizer.optimizer_state_bytes(spec, setup) if optimizer.paged_optimizer(setup) else 0
    segment = loss.logits_segment_bytes(spec, llm or setup)
    held: dict[device_map.CardShare, CardEstimate] = {}  # cards with one share hold the same
    cards = []
    for i, ((holds, layers), share) in enumerate(zip(device_map.card_labels(spec, setup), shares, strict=True)):
        card = held.get(share)
        if card is None:
            mine = {name: device_map.card_terms(terms, share) for name, terms in per_phase.items()}
            card = card_estimate(i, holds, layers, mine, segment)
            if paged:  # paged optimizer state: the card's share, outside the allocator
                extra = -(-int(paged * share.trainable) // 1)
                card = card.model_copy(
                    update={
                        "terms": {**card.terms, "optimizer/paged_state": extra},
                        "device_bytes": card.device_bytes + extra,
                    }
                )
            held[share] = card
        if (card.index, card.holds, card.layers) != (i, holds, layers):
            card = card.model_copy(update={"index": i, "holds": holds, "layers": layers})
        cards.append(card)
    top = max(cards, key=lambda c: c.device_bytes)
    phases_of_top = {
        name: sum(device_map.card_terms(terms, shares[top.index]).values()) for name, terms in per_phase.items()
    }
    return Estimate(
        phase=top.phase,
        terms=top.terms,
        phases=phases_of_top,
        allocated_bytes=top.allocated_bytes,
        reserved_bytes=top.reserved_bytes,
        device_bytes=top.device_bytes,
        total_params=param_counts(spec).total,
        trainable_params=trainable_params(spec, setup),
        cards=cards,
        needed_bytes=top.device_bytes,
    )
