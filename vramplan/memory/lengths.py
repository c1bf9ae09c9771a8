"""Batches of different lengths and torch's caching allocator: what nvidia-smi reads, and what
the card must offer.

With dynamic padding (``--lengths variable``) every micro-batch has its own length. The
allocated peak is the longest batch's: the terms, computed at ``seq_len``, are that batch.
The reserved tier grows beyond it, by a rule of c10/cuda/CUDACachingAllocator.cpp (torch 2.1
to today, default configuration: no ``expandable_segments``, no ``max_split_size_mb``, no
``garbage_collection_threshold``): a request above 10 MiB gets a segment of its own, rounded
up to 2 MiB (``get_allocation_size``); a cached block serves only a request no larger than
itself (best fit, ``get_free_block``); segments are never merged and never returned while
the card has room (``release_cached_blocks`` runs only when a ``cudaMalloc`` fails, or on
``empty_cache``). The loss chain's blocks (the logits, their fp32 copy, the log-softmax and
its backward buffers: ``t·V`` bytes each, hundreds of MiB) are such requests. A micro-batch
longer than every one before it (a record) fits none of the chain's cached blocks, so its
chain takes new segments, and the shorter records' segments stay cached, wholly free. Batches
no longer than an earlier record reuse those blocks (split, merged back when freed). So after
a run long enough to meet every length::

    reserved = reserved(longest batch) + sum over the records but the last of chain(record)

(The first record's 16-bit logits take a segment of their own; every later batch's, the
longest's too, take a cached fp32 block: the difference is within the fixed plan's
``overhead/logits_segment``, which stays counted.) Replaying traced steps of one process
through those rules (vramplan/trace/allocator.py, benchmarks/allocator_replay.py --lengths)
shows exactly that: segments are taken at each new record and at no other batch.

The expected sum is taken over the lengths' distribution: micro-batch ``b`` samples padded to
the longest, each sample's length drawn from the maximum-entropy distribution on ``1..seq_len``
with mean ``avg_tokens`` (a truncated exponential; uniform when no mean is given). A length
``x`` is a record with probability ``P(x) / P(L >= x)``, counted once per 2 MiB step of the
chain's smallest block (two lengths in one step share their segments). Given the samples'
own lengths (``--lengths-file``, vramplan/length_file.py), the distribution is the file's, the
longer samples cut to the cap or dropped as the trainer does (``Policy.over_cap``): over one
pass of those samples in a random order the probability is exact at one sample a batch (the
first sample to reach a step is as likely to be any of those that do), and a finite file has
fewer records than the mean's unending run (tests/test_length_file.py replays 400 orders).

One run meets one order of its samples, and the records' sum spreads widely over orders: these
events are independent step by step, so the note gives the band of 10%..90% of orders
(:func:`cache_band`; Qwen's vocabulary at 2048 tokens: 7.3..23.8 GiB about 15.3). A harness
that seeds every run alike meets the same order at every run of the same samples. Held against
ms-swift's benchmark of one harness with samples cut to the cap and with the longer ones dropped
(tables/measured/lengths_runs.csv, tests/test_lengths_runs.py): the measured cache is the same
for Qwen 1.8B, 7B and 14B (one vocabulary: loss-chain blocks), it lies in the band at 512, 1024
and 2048 tokens and at two samples a batch, and at 2048 tokens, one seeded order, it sits at the
band's low end (8.8 GiB: the plan's expected reserved is +30% on that run, its low end +1%). The
chain there is Qwen (v1)'s loss under accelerate's autocast and ``convert_outputs_to_fp32``
(tests/test_lengths.py ``swift_qwen_step``): three fp32 segments a record, and 14·t·V of
segments at a fixed length of one sample a batch (``shift_logits`` is then a view), what the
truncated runs hold above the weights.

What the card must offer (``needed``) is less: those cached segments are wholly free, and
before it raises out-of-memory torch frees every wholly free segment and retries the
``cudaMalloc`` (``release_cached_blocks``). So ``needed`` is the device tier without them. The
16-bit logits' block a fixed-length plan keeps cached (``overhead/logits_segment``, memory/loss.py)
is wholly free too, but it stays in ``needed``: the verdict's margin (vramplan/verdict.py) is
measured on reserved peaks that hold it, and is applied to the same quantity.

Assumed: the allocator's defaults and a run that never empties the cache. Setting
``PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True`` (segments grow in place) or
``garbage_collection_threshold`` (cached blocks reclaimed past a fraction of the card), or a
loop that calls ``torch.cuda.empty_cache()`` (transformers' ``torch_empty_cache_steps``; PEFT's
MetaMathQA harness every 10 steps), keeps most of this cache from building. A trainer whose loss
makes no t·V block (TRL's fused LM head) grows nothing by records: its chain terms are absent
and the cache is 0 (benchmarks/allocator_replay.py --trl).

``packed`` batches are every one at the cap (flash-attention's per-sample boundaries do not
change a tensor's size): the fixed-length numbers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from functools import cache
from typing import Literal, NamedTuple

from vramplan.length_file import LengthDistribution, OverCap
from vramplan.memory import loss
from vramplan.memory.policy import policy_of
from vramplan.results import Estimate, Note, NoteValue
from vramplan.setup import Setup
from vramplan.spec import ModelSpec

Lengths = Literal["fixed", "packed", "variable"]
LENGTHS: tuple[str, ...] = ("fixed", "packed", "variable")

#: CUDACachingAllocator.cpp: kMinLargeAlloc (a segment of its own above it), kRoundLarge
MIN_LARGE_ALLOC = 10 << 20
ROUND_LARGE = 2 << 20
#: the term the cached records' segments are counted under
CACHE_TERM = "overhead/length_cache"
#: the loss chain's blocks the cache is made of: the terms alive at the start of backward
CHAIN_TERMS = ("loss/log_softmax", "loss/backward_temporaries")
#: the blocks of the chain at the start of backward (the log-softmax and its two backward buffers)
CHAIN_BLOCKS = 3


def max_entropy_rate(avg: float, cap: int) -> float:
    """``lam`` of the density ``exp(lam·x)`` on ``[0, cap]`` whose mean is ``avg`` (0: uniform,
    mean ``cap / 2``): the maximum-entropy distribution of a length with that mean."""
    m = min(max(avg / cap, 1e-6), 1 - 1e-6)

    def mean(k: float) -> float:  # mean / cap of exp(k·u) on [0, 1]; symmetric: mean(-k) = 1 - mean(k)
        if abs(k) < 1e-9:
            return 0.5
        if k < 0:
            return 1 - mean(-k)
        return 1 / -math.expm1(-k) - 1 / k

    lo, hi = -1e4, 1e4
    for _ in range(200):
        mid = (lo + hi) / 2
        if mean(mid) < m:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2 / cap


def length_cdf(cap: int, avg: float | None) -> list[float]:
    """``F[x]`` = P(a sample's length <= x) for x in 0..cap."""
    if not avg or avg >= cap:
        if avg and avg >= cap:
            return [0.0] * cap + [1.0]
        return [x / cap for x in range(cap + 1)]
    lam = max_entropy_rate(avg, cap)
    if abs(lam * cap) < 1e-9:
        return [x / cap for x in range(cap + 1)]
    # F(x) = (exp(lam·x) - 1) / (exp(lam·cap) - 1), written so that neither overflows
    if lam > 0:
        return [math.exp(lam * (x - cap)) * -math.expm1(-lam * x) / -math.expm1(-lam * cap) for x in range(cap + 1)]
    return [math.expm1(lam * x) / math.expm1(lam * cap) for x in range(cap + 1)]


class FileLengths(NamedTuple):
    """The samples' lengths as a file gives them (``Setup.lengths_file``), and what the trainer
    does with the longer ones (``Policy.over_cap``)."""

    dist: LengthDistribution
    over_cap: OverCap


#: where a sample's length is drawn from: the maximum-entropy distribution of a mean, the
#: uniform one (None), or a file's
Source = float | None | FileLengths


def cdf_of(cap: int, source: Source) -> list[float]:
    """``F[x]`` = P(a sample's length <= x) for x in 0..cap, from ``source``."""
    if isinstance(source, FileLengths):
        return source.dist.kept_cdf(cap, source.over_cap)
    return length_cdf(cap, source)


@cache
def expected_records(cap: int, avg: Source, micro_batch: int, step_tokens: int) -> tuple[tuple[int, float], ...]:
    """``(tokens, probability it is ever a record)`` per step of ``step_tokens`` lengths, for
    micro-batches of ``micro_batch`` samples padded to the longest (P(batch <= x) = F(x)^b).
    Over a file's samples in a random order, without replacement, the first batch to reach a
    step's lengths is as likely to be any of them: the same probability, exact at one sample a
    batch."""
    cdf = [f**micro_batch for f in cdf_of(cap, avg)]
    out = []
    lo = 0
    while lo < cap:
        hi = min(cap, lo + step_tokens)
        p = cdf[hi] - cdf[lo]
        above = 1 - cdf[lo]
        if p > 0 and above > 0:
            out.append((hi, min(1.0, p / above)))
        lo = hi
    return tuple(out)


def chain_bytes_per_token(backward_start: Mapping[str, int], tokens: int) -> float:
    """Bytes per token of the loss chain's blocks at the start of backward (its terms scale
    with the tokens of the micro-batch: memory/loss.py)."""
    return sum(backward_start.get(k, 0) for k in CHAIN_TERMS) / max(1, tokens)


def records_cache_bytes(
    per_token: float, seq_len: int, micro_batch: int, avg: Source, blocks: int = CHAIN_BLOCKS
) -> tuple[int, float]:
    """The expected bytes of the records' cached segments beyond the longest batch's own, and
    the expected number of records, for a chain of ``per_token`` bytes a token made of
    ``blocks`` blocks (a batch of ``micro_batch`` samples padded to length x holds b·x tokens)."""
    per_sample_token = per_token * micro_batch  # a batch of b samples at length x holds b·x tokens
    block = per_sample_token / blocks
    if block * seq_len <= MIN_LARGE_ALLOC:
        return 0, 0.0  # the chain's blocks share the small segments: no growth by records
    step = max(1, math.ceil(ROUND_LARGE / block))
    records = expected_records(seq_len, avg, micro_batch, step)
    total = sum(p * blocks * _segment(block * x) for x, p in records)
    count = sum(p for _, p in records)
    final = blocks * _segment(block * seq_len)
    return max(0, round(total - final)), count


#: the normal quantiles of the band the note gives (10% and 90%)
Z10, Z90 = -1.2816, 1.2816


def records_cache_spread(
    per_token: float, seq_len: int, micro_batch: int, avg: Source, z: float, blocks: int = CHAIN_BLOCKS
) -> int:
    """The quantile at normal score ``z``, over the orders the samples come in, of the records'
    cached segments beyond the longest batch's own. Whether a length step holds a record (the
    first batch that reaches that step or above lands in it) is independent of every other step
    (:func:`expected_records` gives its probability ``p``), so the cache is a sum of independent
    terms ``c·Bernoulli(p)``, one a step below the cap's; its cumulants are sums (``c·p``,
    ``c²·p(1-p)``, ``c³·p(1-p)(1-2p)``) and the quantile their Cornish-Fisher expansion (within
    0.4 GiB of the exact convolution at 512..2048 tokens of Qwen's vocabulary)."""
    block = per_token * micro_batch / blocks
    if block * seq_len <= MIN_LARGE_ALLOC:
        return 0
    step = max(1, math.ceil(ROUND_LARGE / block))
    final = _segment(block * seq_len)
    k1 = k2 = k3 = 0.0
    for x, p in expected_records(seq_len, avg, micro_batch, step):
        seg = _segment(block * x)
        if seg == final:
            continue  # the longest batch's own step, counted in the fixed terms
        c = blocks * seg
        k1 += c * p
        k2 += c * c * p * (1 - p)
        k3 += c**3 * p * (1 - p) * (1 - 2 * p)
    if k2 <= 0:
        return round(k1)
    sd = math.sqrt(k2)
    skew = k3 / sd**3
    return max(0, round(k1 + sd * (z + (z * z - 1) * skew / 6)))


def _segment(nbytes: float) -> int:
    return -(-math.ceil(nbytes) // ROUND_LARGE) * ROUND_LARGE


def with_lengths(est: Estimate, setup: Setup, backward_start: Mapping[str, int]) -> Estimate:
    """``est`` with what the lengths add and what the card must offer: under ``variable``, the
    records' cached chains (``overhead/length_cache``) on the reserved and device tiers; in
    every case ``needed_bytes``, the device tier without the records' cached segments."""
    cache = 0
    if setup.lengths == "variable":
        per_token = chain_bytes_per_token(backward_start, setup.tokens)
        cache, _ = records_cache_bytes(per_token, setup.seq_len, setup.micro_batch, source_of(setup))
    terms = dict(est.terms)
    if cache:
        terms[CACHE_TERM] = cache
    needed = est.device_bytes  # the reserved tier's quantity the verdict's margin is measured on
    return est.model_copy(
        update={
            "terms": terms,
            "reserved_bytes": est.reserved_bytes + cache,
            "device_bytes": est.device_bytes + cache,
            "needed_bytes": needed,
        }
    )


def source_of(setup: Setup) -> Source:
    """Where the batches' lengths are drawn from: the lengths file (as the trainer keeps its
    samples), else ``avg_tokens``'s maximum-entropy distribution (at most the cap), else uniform."""
    if setup.lengths_file is not None:
        return FileLengths(setup.lengths_file, policy_of(setup).over_cap)
    return min(setup.avg_tokens, setup.seq_len) if setup.avg_tokens else None


def mean_of(setup: Setup) -> float | None:
    """The lengths' mean: the file's trained samples', or ``avg_tokens`` (at most the cap), else
    none (uniform)."""
    source = source_of(setup)
    if isinstance(source, FileLengths):
        return source.dist.kept_mean(setup.seq_len, source.over_cap)
    return source


def _per_token(spec: ModelSpec, setup: Setup) -> float:
    return (loss.log_softmax_bytes(spec, setup) + loss.loss_backward_temp_bytes(spec, setup)) / setup.tokens


def records_of(spec: ModelSpec, setup: Setup) -> float:
    """The expected number of records (batches longer than every one before, 2 MiB of the
    full-logits chain apart) the run meets."""
    return records_cache_bytes(_per_token(spec, setup), setup.seq_len, setup.micro_batch, source_of(setup))[1]


def cache_band(spec: ModelSpec, setup: Setup) -> tuple[int, int]:
    """The records' cache at the 10% and 90% of the orders the samples may come in: one run meets
    one order (a seeded sampler, the same one at every run of the same data), so what it holds is
    one draw, about the expected cache the reserved tier carries."""
    per_token, avg = _per_token(spec, setup), source_of(setup)
    lo, hi = (records_cache_spread(per_token, setup.seq_len, setup.micro_batch, avg, z) for z in (Z10, Z90))
    return lo, hi


def capped_reading(est: Estimate, memory_bytes: int, what: str) -> str:
    """What nvidia-smi reads when cached blocks would take the device tier past the card but the
    run needs less: the card (a cudaMalloc that fails frees the wholly free cached blocks of every
    stream and retries); empty when the card is not passed."""
    if not est.device_bytes > memory_bytes >= est.needed_bytes:
        return ""
    gib = 2**30
    return (
        f"nvidia-smi will read up to the card's {memory_bytes / gib:.1f} GiB ({what} would reach"
        f" {est.device_bytes / gib:.1f}; torch frees cached blocks when the card is full)"
    )


def cached_note(est: Estimate, memory_bytes: int, term: str, key: str, code: str, lead: str, what: str) -> Note:
    """A note for wholly free cached blocks (``term``) that make nvidia-smi read more than the run
    needs: what it reads (up to the card when they would pass it, :func:`capped_reading`) and the
    card the run needs. ``lead`` says where the blocks come from; ``what`` names them."""
    gib = 2**30
    cached = est.terms.get(term, 0)
    data: dict[str, NoteValue] = {
        key: cached,
        "device_bytes": est.device_bytes,
        "needed_bytes": est.needed_bytes,
        "memory_bytes": memory_bytes,
    }
    smi = capped_reading(est, memory_bytes, what) or (
        f"nvidia-smi will read about {est.device_bytes / gib:.1f} GiB ({cached / gib:.1f} GiB of it cached)"
    )
    return Note(code=code, data=data, text=f"{lead}: {smi}; it runs on a card of {est.needed_bytes / gib:.1f} GiB")


def lengths_note(est: Estimate, spec: ModelSpec, setup: Setup, memory_bytes: int) -> Note:
    """``lengths.cache``: what nvidia-smi will read, and the card the run needs."""
    gib = 2**30
    cache = est.terms.get(CACHE_TERM, 0)
    band = cache_band(spec, setup) if cache else (0, 0)
    data: dict[str, NoteValue] = {
        "lengths": setup.lengths,
        "avg_tokens": mean_of(setup) or setup.seq_len / 2,
        "records": round(records_of(spec, setup), 2),
        "cache_bytes": cache,
        "cache_band_bytes": list(band),
        "device_bytes": est.device_bytes,
        "needed_bytes": est.needed_bytes,
        "memory_bytes": memory_bytes,
    }
    smi = capped_reading(est, memory_bytes, "the cache")
    if not smi and not cache:
        smi = (
            f"nvidia-smi will read about {est.device_bytes / gib:.1f} GiB (no cache grows with the lengths: the"
            " loss keeps no block large enough for a segment of its own)"
        )
    elif not smi:
        base = est.device_bytes - cache
        smi = (
            f"nvidia-smi will read about {est.device_bytes / gib:.1f} GiB ({cache / gib:.1f} GiB of it the"
            f" shorter batches' loss chains, cached; {(base + band[0]) / gib:.1f} to {(base + band[1]) / gib:.1f}"
            " GiB for 80% of the orders the samples may come in)"
        )
    source = source_of(setup)
    drawn = ""
    if isinstance(source, FileLengths):
        dist, cap = source.dist, setup.seq_len
        over = dist.over(cap)
        data |= {"lengths_file": dist.source, "samples": dist.samples, "over_cap_share": round(over, 4)}
        fate = "dropped" if source.over_cap == "drop" else "cut to it"
        longer = f", {over:.0%} longer than {cap} {fate}" if over else ""
        drawn = f" ({dist.samples:,} samples of {dist.source}, {data['avg_tokens']:,.0f} tokens on average{longer})"
    text = (
        f"variable lengths{drawn}: {smi}; it runs on a card of {est.needed_bytes / gib:.1f} GiB"
        " (torch frees wholly free cached segments before out-of-memory)"
    )
    return Note(code="lengths.cache", data=data, text=text)
