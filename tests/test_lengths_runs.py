"""ms-swift's benchmark of one harness run with samples cut to the cap (fixed) and with the longer
samples dropped (variable), curated into tables/measured/lengths_runs.csv by
benchmarks/curate_lengths_runs.py (sources and harness details there), held against the plan."""

from __future__ import annotations

import csv
import statistics
import sys
from pathlib import Path
from typing import Any

import pytest

from vramplan.memory import lengths
from vramplan.published import Comparison, compare_csv

ROOT = Path(__file__).resolve().parents[1]
CSV = ROOT / "tables" / "measured" / "lengths_runs.csv"
GIB = 2**30
V = 151936  # Qwen (v1)'s vocabulary, the same for 1.8B, 7B and 14B
MODELS = ("qwen-1.8b", "qwen-7b", "qwen-14b")
CAPS = (512, 1024, 2048)


@pytest.fixture(scope="module")
def rows() -> list[Comparison]:
    return compare_csv(CSV)


def _by_id(rows: list[Comparison]) -> dict[str, Comparison]:
    return {r.id: r for r in rows}


def _gib(r: Comparison) -> float:
    assert r.measured_bytes is not None
    return r.measured_bytes / GIB


def test_curation_reproduces_the_table() -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import curate_lengths_runs
    finally:
        sys.path.pop(0)
    with CSV.open(newline="") as fh:
        assert curate_lengths_runs.curate() == list(csv.DictReader(fh))
    # the lengths the rows over all 4959 rows carry: the statistic's log-normal cut to 91..cap
    assert [curate_lengths_runs.kept_mean(c) for c in (512, 1024, 2048)] == [413, 766, 1346]
    assert curate_lengths_runs.kept_share(2048) == pytest.approx(0.38, abs=0.01)


def test_every_row_is_compared_or_excluded_with_its_reason(rows: list[Comparison]) -> None:
    assert len(rows) == 48
    excluded = [r for r in rows if r.excluded]
    # truncation_left at 4096/8192 (most samples below the cap) and delete at 4096/8192 (the first 1000 rows)
    assert {r.id.rsplit("-", 1)[1] for r in excluded} == {"4096", "8192"} and len(excluded) == 12
    assert all(r.notes.startswith("excluded: ") for r in excluded)


def test_fixed_rows_within_10pct_where_the_fixed_plan_holds(rows: list[Comparison]) -> None:
    """Qwen-7B and Qwen-14B LoRA with flash-attn and checkpointing, cut to 512..2048 (batch 1 to 8,
    ranks 2..64, c_attn or all linear layers): the fixed plan within 10%. (Qwen-1.8B reads +25..27%
    and Qwen-7B without flash-attn and checkpointing +27%: the fixed plan's slack, outside the
    lengths model.)"""
    held = [
        r for r in rows if r.id.startswith("f-") and not r.excluded and "1.8b" not in r.id and "eager-nogc" not in r.id
    ]
    assert len(held) == 14
    errs = {r.id: r.error_pct for r in held}
    assert all(e is not None and abs(e) <= 10 for e in errs.values()), errs


def test_fixed_runs_hold_fourteen_vocab_blocks_above_the_weights(rows: list[Comparison]) -> None:
    """What the truncated runs hold above the weights and the checkpointed activations (each
    layer's input, 2·h bytes a token) at 512 and 1024 tokens is 13.3..14.2·t·V bytes for 1.8B and
    7B (16.4 and 15.2 for the 14B, whose other buffers weigh more against a short chain): the loss
    chain's segments a fixed-length step of one sample keeps, 14·t·V (tests/test_lengths.py
    ``test_the_ms_swift_chain_of_one_step``), and little else."""
    from vramplan.models import load_model

    by = _by_id(rows)
    for model in MODELS:
        p = _swift_lora(model)
        spec = load_model(model)
        weights = (p.terms["weights/frozen"] + p.terms["weights/trainable"]) / GIB
        for cap in (512, 1024):
            checkpoints = spec.num_layers * 2 * spec.hidden_size * cap / GIB
            per_tv = (_gib(by[f"f-max_length-{model}-{cap}"]) - weights - checkpoints) * GIB / (cap * V)
            assert 13.0 < per_tv < 16.5, (model, cap, per_tv)


def test_the_measured_cache_is_the_vocabulary_s_not_the_model_s(rows: list[Comparison]) -> None:
    """Variable minus fixed, same cap: the same for a 1.8B, a 7B and a 14B model (one vocabulary):
    the cache is made of loss-chain blocks (t·V), as memory/lengths.py models it. At 512 tokens
    the variable run holds 3.6 GiB above the weights: 1.2 the fixed chain's segments, 2.4 the
    shorter records' cached chains."""
    by = _by_id(rows)
    for cap in (512, 1024, 2048):
        caches = [
            _gib(by[f"v-max_length-{m}-{cap}"]) - _gib(by[f"f-max_length-{m}-{cap}"])
            for m in ("qwen-1.8b", "qwen-7b", "qwen-14b")
        ]
        assert max(caches) - min(caches) < 0.45, (cap, caches)


def test_the_records_cache_against_the_measured(rows: list[Comparison]) -> None:
    """The plan's records cache (``overhead/length_cache``) against variable minus fixed: within
    25% at 512 and 1024 tokens (median over the three models), and above it at 2048, where the
    expectation over orders comes out 1.7x the one seeded order's 8.8 GiB (at the band's low
    end: ``test_the_measured_cache_lies_in_the_plan_s_band_of_orders``; tests/test_lengths.py
    keeps the expectation against 27.74 GiB as a strict xfail)."""

    by = _by_id(rows)
    for cap, lo, hi in ((512, 0.75, 1.25), (1024, 0.75, 1.25), (2048, 1.0, 2.0)):
        ratios = []
        for m in ("qwen-1.8b", "qwen-7b", "qwen-14b"):
            measured = _gib(by[f"v-max_length-{m}-{cap}"]) - _gib(by[f"f-max_length-{m}-{cap}"])
            avg = int(dict(kv.split("=") for kv in _settings(cap))["avg_tokens"])
            p = _swift_lora(m, seq_len=cap, lengths="variable", avg_tokens=avg)
            ratios.append(p.terms[lengths.CACHE_TERM] / GIB / measured)
        assert lo <= statistics.median(ratios) <= hi, (cap, ratios)


def test_the_measured_cache_lies_in_the_plan_s_band_of_orders(rows: list[Comparison]) -> None:
    """Each run meets one order of its samples (the harness seeds every run alike): the measured
    cache (variable minus fixed) inside the plan's band, the records' cache for 10%..90% of the
    orders, at 512, 1024 and 2048 tokens for all three models, and at two samples a batch."""
    by = _by_id(rows)
    cases = [(m, cap, 1, f"v-max_length-{m}-{cap}", f"f-max_length-{m}-{cap}") for m in MODELS for cap in CAPS]
    b2 = "qwen-7b-b2-fa-gc-r8-c_attn"
    cases.append(("qwen-7b", 2048, 2, f"v-batch_size-{b2}", f"f-batch_size-{b2}"))
    for model, cap, batch, var, fixed in cases:
        measured = _gib(by[var]) - _gib(by[fixed])
        avg = int(dict(kv.split("=") for kv in _settings(cap))["avg_tokens"])
        p = _swift_lora(
            model, seq_len=cap, micro_batch=batch, grad_accum=16 // batch, lengths="variable", avg_tokens=avg
        )
        (note,) = [n for n in p.notes if n.code == "lengths.cache"]
        lo, hi = (b / GIB for b in note.data["cache_band_bytes"])
        assert lo <= measured <= hi, (var, lo, measured, hi)


def _swift_lora(model: str, **extra: object) -> Any:
    """The benchmark's setup (curate_lengths_runs.py): LoRA r8 on c_attn, bf16, GC, flash-attn, batch 1."""
    from vramplan import plan

    kw: dict[str, Any] = dict(seq_len=2048, micro_batch=1, grad_accum=16) | dict(extra)
    return plan(
        model,
        gpu="a100-80g",
        trainer="swift",
        method="lora",
        precision="bf16",
        lora_rank=8,
        lora_targets="c_attn",
        grad_checkpointing=True,
        attention="flash-attn-2",
        **kw,
    )


def _settings(cap: int) -> list[str]:
    with CSV.open(newline="") as fh:
        (row,) = [r for r in csv.DictReader(fh) if r["id"] == f"v-max_length-qwen-7b-{cap}"]
    return row["settings"].split(";")


def test_variable_rows_are_never_underestimated(rows: list[Comparison]) -> None:
    """Every variable row over all 4959 rows: the plan at or above the published peak (batch 8
    reads 76.1 GiB, where the card's 79.2 GiB caps the cache: a failed cudaMalloc frees the
    cached segments)."""
    held = [r for r in rows if r.id.startswith("v-") and not r.excluded]
    assert len(held) == 18
    assert all(r.error_pct is not None and r.error_pct >= 0 for r in held), {r.id: r.error_pct for r in held}
