"""Variable batch lengths (vramplan/memory/lengths.py): the records rule against the allocator
replay, the published fixed/variable pair, and plans that do not move by default."""

from __future__ import annotations

import random

import pytest

from vramplan.memory import lengths
from vramplan.trace.allocator import CachingAllocator

GIB = 2**30
MiB = 2**20
V = 151936  # Qwen-7B's vocabulary


def chain_step(a: CachingAllocator, key: int, tokens: int, per_token: int) -> None:
    """The loss chain of one micro-batch as the fp32 path runs it (memory/loss.py): the 16-bit
    logits, their fp32 copy and the log-softmax; the first two freed; backward's two buffers."""
    a.malloc(key, 2 * tokens * per_token)
    a.malloc(key + 1, 4 * tokens * per_token)
    a.malloc(key + 2, 4 * tokens * per_token)
    a.free(key)
    a.free(key + 1)
    a.malloc(key + 3, 4 * tokens * per_token)
    a.malloc(key + 4, 4 * tokens * per_token)
    for k in (key + 2, key + 3, key + 4):
        a.free(k)


def swift_qwen_step(a: CachingAllocator, t: int, v: int = V) -> None:
    """The vocabulary-sized requests of one ms-swift step on Qwen (v1) LoRA, bf16, one sample a
    batch, in order (ms-swift 1.5/1.6 with transformers 4.36, accelerate 0.25, torch 2.1):

    - ``QWenLMHeadModel.forward`` (modeling_qwen.py): ``lm_logits`` (A, 2·t·V); ``shift_logits =
      lm_logits[..., :-1, :].contiguous()`` is a view, no copy, for one sample (a prefix of a
      contiguous [1, t, V] tensor is contiguous); ``CrossEntropyLoss`` under accelerate's autocast:
      the bf16 input converted to fp32 (C, 4·t'·V; ATen ``log_softmax(input, dim, dtype)`` runs
      ``input_.toType(dtype)`` for a bf16 input) and the log-softmax (D, 4·t'·V), saved for
      backward; C freed when the loss returns;
    - accelerate 0.25 ``prepare_model`` wraps forward in ``convert_outputs_to_fp32``: the logits'
      ``.float()`` (E, 4·t·V) while A is alive, then A freed; ms-swift's ``compute_loss``
      (swift/trainers/trainers.py) reads ``outputs.logits.argmax`` and returns, freeing E;
    - backward: ``nll_loss_backward`` (F, 4·t'·V), ``_log_softmax_backward_data`` (G, 4·t'·V),
      then F and D freed, ``ToCopyBackward`` to bf16 (H, 2·t'·V), G freed, ``slice_backward``'s
      zeros (I, 2·t·V), H freed, the LM head's input grad, I freed."""
    tp = t - 1
    a.malloc(1, 2 * t * v)  # A
    a.malloc(3, 4 * tp * v)  # C
    a.malloc(4, 4 * tp * v)  # D
    a.free(3)
    a.malloc(5, 4 * t * v)  # E
    a.free(1)
    a.free(5)
    a.malloc(6, 4 * tp * v)  # F
    a.malloc(7, 4 * tp * v)  # G
    a.free(6)
    a.free(4)
    a.malloc(8, 2 * tp * v)  # H
    a.free(7)
    a.malloc(9, 2 * t * v)  # I
    a.free(8)
    a.malloc(10, 2 * t * 4096)  # the LM head's input grad
    a.free(9)
    a.free(10)


def test_the_ms_swift_chain_of_one_step() -> None:
    """Replayed, a fixed-length step keeps 14·t·V bytes of segments (A and three fp32 blocks; a
    fourth when E outgrows C's 2 MiB-rounded segment): the truncated runs of ms-swift's benchmark
    hold 13.9..14.4·t·V above the weights and the checkpointed activations at 512..2048 tokens
    (tests/test_lengths_runs.py). A record takes three new fp32 segments (C, D and E or G): the
    chain memory/lengths.py counts per record (``CHAIN_BLOCKS``)."""
    for t in (512, 1024, 2048):
        a = CachingAllocator()
        for _ in range(3):
            swift_qwen_step(a, t)
        assert 14 * t * V <= a.reserved <= 18 * t * V + 10 * MiB
        before = a.reserved
        longer = t + 300
        swift_qwen_step(a, longer)
        assert 3 * 4 * (longer - 1) * V <= a.reserved - before <= 3 * 4 * longer * V + 6 * MiB
        before = a.reserved
        for shorter in (t, t - 100, longer - 5):  # no longer than the record: no new segment
            swift_qwen_step(a, shorter)
        assert a.reserved == before


def test_reserved_grows_at_records_only() -> None:
    """Replayed through the allocator's rules, a batch longer than every one before takes new
    segments for the chain's three fp32 blocks; any other batch takes none."""
    rnd = random.Random(3)
    a = CachingAllocator()
    longest, grown = 0, []
    for i in range(60):
        t = rnd.randint(100, 2048)
        before = a.reserved
        chain_step(a, 10 * i, t, V)
        grown.append((t > longest, a.reserved > before))
        longest = max(longest, t)
    assert all(record == grew for record, grew in grown[1:])
    assert sum(record for record, _ in grown) >= 3


def test_records_sum_matches_a_replay() -> None:
    """The replayed reserved peak is the longest batch's chain plus three fp32 segments per
    earlier record: the sum memory/lengths.py takes in expectation."""
    rnd = random.Random(7)
    a = CachingAllocator()
    records = []
    for i in range(200):
        t = rnd.randint(1, 2048)
        if not records or t > records[-1]:
            records.append(t)
        chain_step(a, 10 * i, t, V)
    seg = lengths._segment
    longest_alone = CachingAllocator()
    chain_step(longest_alone, 0, records[-1], V)
    # records a 2 MiB step apart share their segments
    earlier = sum(3 * seg(4 * t * V) for t in records[:-1] if seg(4 * t * V) != seg(4 * records[-1] * V))
    # the first record's 16-bit logits' block is a segment of its own (nothing was cached yet);
    # later ones, the longest's too, take a cached fp32 block
    extra = seg(2 * records[0] * V) - seg(2 * records[-1] * V)
    # (besides, a batch of a few tokens takes 2 MiB small-pool segments)
    assert a.peak_reserved - longest_alone.peak_reserved == pytest.approx(earlier + extra, abs=8 * MiB)
    # and its needed stays the longest batch's: the earlier records' segments are wholly free
    assert a.peak_needed <= longest_alone.peak_reserved


def test_expected_records_of_a_uniform_length() -> None:
    """Uniform lengths on 1..n met in a run long enough: about ln(n / step) + 1 records."""
    import math

    recs = lengths.expected_records(2048, None, 1, 1)
    assert sum(p for _, p in recs) == pytest.approx(sum(1 / k for k in range(1, 2049)), rel=1e-6)
    assert sum(p for _, p in lengths.expected_records(2048, None, 1, 4)) == pytest.approx(math.log(512) + 0.58, abs=0.1)


def test_the_mean_is_kept() -> None:
    for avg in (300, 1024, 1347, 1900):
        cdf = lengths.length_cdf(2048, avg)
        mean = sum(x * (cdf[x] - cdf[x - 1]) for x in range(1, 2049))
        assert mean == pytest.approx(avg, abs=2)


def swift_qwen7b(**extra: object) -> object:
    from vramplan import plan

    return plan(
        "qwen-7b",
        gpu="a100-80g",
        trainer="swift",
        method="lora",
        precision="bf16",
        lora_rank=8,
        lora_targets="c_attn",
        seq_len=2048,
        micro_batch=1,
        grad_accum=16,
        grad_checkpointing=True,
        attention="flash-attn-2",
        **extra,
    )


def test_published_fixed_and_variable_pair() -> None:
    """ms-swift's benchmark (docs/source/LLM/Benchmark.md; scripts/benchmark/test_memory_time/
    run_single.py prints torch.cuda.max_memory_reserved), qwen-7b-chat LoRA r8 on c_attn, GC,
    flash-attn, batch 1, max_length 2048, torch 2.1.1, A100, cls-fudan-news-zh (3234.4 +- 2547.5
    tokens a sample, min 91, max 19548): with ``truncation_strategy truncation_left`` (every sample
    cut to 2048; ms-swift @cfcb67265, 2023-12-14) 19362 MiB = 18.9 GiB; with the default ``delete``
    (longer samples dropped, lengths vary; @a5cea9453, 2024-01-03) 27.74 GiB.

    The kept lengths' mean, 1347, is that of a log-normal with the dataset's mean and spread cut at
    91..2048 (38% of the samples kept). Qwen (v1)'s own loss (modeling_qwen.py
    ``QWenLMHeadModel.forward``) makes no ``.float()`` copy, but ms-swift trains it with ``bf16=True``
    (swift/llm/utils/argument.py ``select_dtype``, passed to the training arguments by
    swift/llm/sft.py, at both commits), so accelerate runs the forward under autocast and the
    log-softmax is fp32 (memory/loss.py ``chain_bytes``): the chain at the start of backward is
    12·t'·V, three fp32 blocks, as for transformers' loss. A 16-bit chain (6·t·V) would halve the
    cache and land near 27.74 GiB, but this run does not compute one."""
    from vramplan.memory import loss
    from vramplan.models import load_model
    from vramplan.setup import make_setup

    fixed = swift_qwen7b()
    assert fixed.peak.reserved_bytes / GIB == pytest.approx(18.9, rel=0.10)
    assert loss.chain_bytes(load_model("qwen-7b"), make_setup(method="lora", precision="bf16")) == 4
    planned = swift_qwen7b(lengths="variable", avg_tokens=1347)
    cache, records = lengths.records_cache_bytes(12 * V * 2047 / 2048, 2048, 1, 1347)
    assert 5 < records < 7
    assert planned.terms[lengths.CACHE_TERM] == pytest.approx(cache, rel=0.01)


@pytest.mark.xfail(
    strict=True,
    reason="issue 19: the plan carries the expected cache over sample orders (35.9 GiB); the published run is one"
    " order, at the low end of the band (see test_published_variable_run_within_the_orders_band)",
)
def test_published_variable_run_within_10pct() -> None:
    """The pair's variable run through the plan (the fp32 chain ms-swift's autocast runs): 35.9 GiB
    against 27.74, +30%: the fixed part +1.8 GiB (20.67 against 18.91), the records' cache 15.2
    GiB, the expectation over the orders the samples may come in, against 8.8 measured (variable
    minus fixed). The run meets one order: benchmarks/curate_lengths_runs.py's harness gives
    every run the same seed (run_single.py ``global_seed=42`` -> ``seed=get_seed(random_state)``),
    so every run of the same kept samples meets the same records (the 1.8B, 7B and 14B rows at
    2048 hold the same cache within 0.2 GiB, five 7B rows of different ranks, targets and
    attention 27.71..27.87 GiB), and that order's records sum to 8.8 GiB where 80% of orders
    give 7.3..23.8 GiB. Not the lengths' mean: a mean of 1950 of 2048 would still leave +10%."""
    planned = swift_qwen7b(lengths="variable", avg_tokens=1347)
    assert planned.peak.reserved_bytes / GIB == pytest.approx(27.74, rel=0.10)


def test_published_variable_run_within_the_orders_band() -> None:
    """The published pair through the plan's band of orders: the fixed plan plus the records' cache
    at the 10% of orders comes within 1% of 27.74 GiB, and the measured cache (27.74 - 18.91 GiB)
    lies inside the band (the same for 512 and 1024 tokens and for 1.8B and 14B:
    tests/test_lengths_runs.py)."""
    planned = swift_qwen7b(lengths="variable", avg_tokens=1347)
    (note,) = [n for n in planned.notes if n.code == "lengths.cache"]
    lo, hi = note.data["cache_band_bytes"]
    fixed = swift_qwen7b().peak.reserved_bytes
    assert (fixed + lo) / GIB == pytest.approx(27.74, rel=0.02)
    assert lo / GIB < 27.74 - 18.91 < hi / GIB
    assert lo < planned.terms[lengths.CACHE_TERM] < hi


def test_the_band_is_the_convolution_of_independent_records() -> None:
    """The band (Cornish-Fisher on the records' cumulants) against the exact distribution of a
    sum of independent ``c·Bernoulli(p)``, one term a length step, and against orders drawn at
    random: within 0.5 GiB (Qwen's vocabulary, 2048 tokens, mean 1347)."""
    import bisect

    per = 12 * V * 2047 / 2048
    lo = lengths.records_cache_spread(per, 2048, 1, 1347, lengths.Z10)
    hi = lengths.records_cache_spread(per, 2048, 1, 1347, lengths.Z90)
    block = per / 3
    step = -(-lengths.ROUND_LARGE // int(block))
    final = lengths._segment(block * 2048)
    grid = 64 * MiB
    dist = [1.0]
    for x, p in lengths.expected_records(2048, 1347, 1, step):
        seg = lengths._segment(block * x)
        if seg == final:
            continue
        k = round(3 * seg / grid)
        grown = [0.0] * (len(dist) + k)
        for i, d in enumerate(dist):
            grown[i] += d * (1 - p)
            grown[i + k] += d * p
        dist = grown
    cum = [sum(dist[: i + 1]) for i in range(len(dist))]
    exact = [bisect.bisect_left(cum, q) * grid for q in (0.1, 0.9)]
    assert lo == pytest.approx(exact[0], abs=0.5 * GIB) and hi == pytest.approx(exact[1], abs=0.5 * GIB)
    # orders drawn at random from the same lengths: the band holds about 80% of them
    cdf = lengths.length_cdf(2048, 1347)
    rnd = random.Random(11)
    caches = []
    for _ in range(300):
        longest, steps = 0, set()
        for _ in range(3000):
            x = max(1, bisect.bisect_left(cdf, rnd.random()))
            if x > longest:
                longest = x
                steps.add(lengths._segment(block * x))
        caches.append(sum(3 * s for s in steps if s != lengths._segment(block * longest)))
    inside = sum(lo <= c <= hi for c in caches) / len(caches)
    assert 0.65 < inside < 0.9


def test_default_and_packed_plans_do_not_move() -> None:
    fixed, packed = swift_qwen7b(), swift_qwen7b(lengths="packed")
    assert lengths.CACHE_TERM not in fixed.terms
    assert packed.peak == fixed.peak and packed.terms == fixed.terms


def test_variable_lengths_move_reserved_and_device_not_allocated_nor_needed() -> None:
    from vramplan.memory import loss
    from vramplan.memory.phases import estimate
    from vramplan.models import load_model
    from vramplan.setup import make_setup

    spec = load_model("qwen2.5-7b")
    base = dict(method="lora", seq_len=4096, grad_checkpointing=True)
    fixed = estimate(spec, make_setup(**base))
    var = estimate(spec, make_setup(**base, lengths="variable", avg_tokens=1500))
    assert var.allocated_bytes == fixed.allocated_bytes
    cache = var.terms[lengths.CACHE_TERM]
    assert cache > 2 * GIB
    assert var.reserved_bytes == fixed.reserved_bytes + cache
    assert var.device_bytes == fixed.device_bytes + cache == sum(var.terms.values())
    # needed: the device tier without the records' cache (the fixed plan's cached logits block stays:
    # the verdict's margin is measured on reserved peaks that hold it)
    assert var.needed_bytes == fixed.needed_bytes == fixed.device_bytes
    # a mean nearer the cap: fewer records, less cache
    near = estimate(spec, make_setup(**base, lengths="variable", avg_tokens=3800))
    assert 0 < near.terms[lengths.CACHE_TERM] < cache
    # four samples a batch, padded to the longest: the chain is the batch's (b·x tokens)
    four = estimate(spec, make_setup(**base, micro_batch=4, lengths="variable", avg_tokens=1500))
    fixed4 = estimate(spec, make_setup(**base, micro_batch=4))
    assert four.allocated_bytes == fixed4.allocated_bytes
    setup4 = make_setup(**base, micro_batch=4)
    per_token = (loss.log_softmax_bytes(spec, setup4) + loss.loss_backward_temp_bytes(spec, setup4)) / (4 * 4096)
    assert four.terms[lengths.CACHE_TERM] == lengths.records_cache_bytes(per_token, 4096, 4, 1500)[0]


def test_the_plan_says_both_numbers() -> None:
    p = swift_qwen7b(lengths="variable", avg_tokens=1347)
    (note,) = [n for n in p.notes if n.code == "lengths.cache"]
    assert note.data["device_bytes"] == p.peak.device_bytes
    assert note.data["needed_bytes"] == p.peak.needed_bytes
    assert note.data["needed_bytes"] < note.data["device_bytes"]
    assert 4 < note.data["records"] < 8
    assert "nvidia-smi will read about" in note.text and "it runs on a card of" in note.text


def test_on_a_card_too_small_for_the_cache_nvidia_smi_reads_the_card() -> None:
    """torch frees wholly free segments when a cudaMalloc fails and retries: the cache never
    holds more than the card, and the note says so."""
    from vramplan import plan

    p = plan(
        "qwen2.5-7b",
        "4090",
        trainer="hf",
        method="qlora",
        seq_len=2048,
        micro_batch=1,
        grad_checkpointing=True,
        lengths="variable",
    )
    (note,) = [n for n in p.notes if n.code == "lengths.cache"]
    assert note.data["device_bytes"] > note.data["memory_bytes"] >= note.data["needed_bytes"]
    assert f"up to the card's {p.gpu.memory_bytes / GIB:.1f} GiB" in note.text


@pytest.mark.trace
def test_a_traced_run_of_varied_lengths_grows_at_records(tmp_path: pytest.TempPathFactory) -> None:
    """Micro-batches of different lengths traced in one process (a small model whose loss chain
    dwarfs it) and replayed as one stream: reserved grows at the batches longer than every one
    before and nowhere else, and the needed tier stays the longest batch's."""
    import json

    import torch

    from tests.conftest import TINY_CONFIG
    from vramplan.setup import make_setup
    from vramplan.trace import allocator, run

    config = tmp_path / "config.json"  # type: ignore[operator]
    config.write_text(json.dumps({**TINY_CONFIG, "vocab_size": 32000, "max_position_embeddings": 4096}))
    order = [700, 1500, 900, 1200, 2048, 1000, 1800, 600]

    def replayed(order: list[int]) -> list[tuple[int, int]]:
        it = iter(order)

        def ids_maker(vocab: int, setup: object, device: str, fake_mode: object) -> object:
            def make() -> object:
                with fake_mode:  # type: ignore[attr-defined]
                    return torch.randint(0, vocab, (1, next(it)), device=device)

            return make

        seen: list[list[tuple[int, int]]] = []
        keep_ids, keep_replay = run._ids_maker, run.replay
        run._ids_maker = ids_maker  # type: ignore[assignment]
        run.replay = lambda ev: (seen.append(list(ev)), keep_replay(ev))[1]  # type: ignore[assignment]
        try:
            setup = make_setup(method="lora", seq_len=2048, grad_checkpointing=True, grad_accum=len(order))
            run.trace(str(config), setup, steps=1, keep_timeline=False)
        finally:
            run._ids_maker, run.replay = keep_ids, keep_replay
        return seen[0]

    events = replayed(order)
    a = allocator.CachingAllocator()
    grown: list[int] = []
    for key, nbytes in events:
        if nbytes < 0:
            a.free(key)
            continue
        before = a.reserved
        a.malloc(key, nbytes)
        if a.reserved - before > 50 * MiB:
            grown.append(nbytes)
    v = 32000
    # every large new segment is a loss-chain block (t·V elements of 1, 2 or 4 bytes) of a record
    records = (700, 1500, 2048)
    of = {n: {t for t in order for k in (1, 2, 4) if n == k * t * v} for n in grown}
    assert all(ts and ts <= set(records) for ts in of.values()), of
    assert set().union(*of.values()) == set(records)
    fixed = allocator.replay(replayed([2048] * len(order)))
    # the two shorter records' fp32 chains (three blocks each) stay cached
    assert a.peak_reserved - fixed.peak_reserved >= 0.95 * 3 * 4 * (700 + 1500) * v
    assert a.peak_needed <= fixed.peak_needed + 64 * MiB
