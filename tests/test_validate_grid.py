"""CI gate of the exactness claim: the recorded grid is held to its bounds, and a rotating
sample of grid configurations is traced anew each run, so drift in transformers, PEFT or
bitsandbytes shows up."""

from __future__ import annotations

import datetime as dt

import pytest

from vramplan.memory import estimate
from vramplan.memory.phases import traceable_bytes
from vramplan.models import load_model
from vramplan.validate import GRID, grid_setups, summarize, traced_rows

MAX_ABS_PCT = 3.0
MAX_MEDIAN_PCT = 1.0
MAX_UNDER_PCT = 2.0
SAMPLE = 8


def test_grid_spans_the_space() -> None:
    setups = grid_setups()
    assert len(setups) >= 80
    methods = {(s.method, s.precision if s.method == "full" else "", s.quant) for _, s in setups}
    assert {
        ("full", "amp-bf16", "none"),
        ("full", "bf16", "none"),
        ("freeze", "", "none"),
        ("lora", "", "none"),
        ("qlora", "", "bnb-nf4"),
        ("qlora", "", "bnb-nf4-dq"),
    } <= methods
    assert {"adamw", "adamw-fused", "adamw-8bit", "sgd", "adafactor"} <= {s.optimizer for _, s in setups}
    assert min(s.seq_len for _, s in setups) <= 256 and max(s.seq_len for _, s in setups) >= 32768
    assert {1, 8} <= {s.micro_batch for _, s in setups}
    assert {8, 256} <= {s.lora_rank for _, s in setups if s.is_lora}
    assert {"eager", "sdpa"} <= {s.attention for _, s in setups}
    assert any(s.trainable_extra for _, s in setups)
    assert {
        "qwen2.5-0.5b",
        "qwen2.5-7b",
        "qwen2.5-14b",
        "llama-3.1-8b",
        "mistral-7b-v0.3",
        "gemma-2-9b",
        "qwen3-30b-a3b",
    } <= {m for m, _ in setups}


def test_recorded_grid_within_bounds() -> None:
    rows = traced_rows()
    assert len(rows) >= 80, "trace the grid: python benchmarks/trace_grid.py"
    summary = summarize(rows)
    worst = summary.rows[:3]
    assert summary.max_abs_pct <= MAX_ABS_PCT, worst
    assert summary.median_abs_pct <= MAX_MEDIAN_PCT
    assert summary.worst_underestimate_pct >= -MAX_UNDER_PCT, worst


def _rotating_sample() -> list[int]:
    """Eight grid configurations, a different eight each week."""
    week = dt.date.today().isocalendar()[1]
    return [(week * SAMPLE + i) % len(GRID) for i in range(SAMPLE)]


@pytest.mark.parametrize("index", _rotating_sample())
@pytest.mark.trace
def test_retrace_rotating_sample(index: int) -> None:
    from vramplan.trace.run import trace

    model, setup = grid_setups()[index]
    traced = trace(model, setup, steps=2, keep_timeline=False).peak_bytes
    est = traceable_bytes(estimate(load_model(model), setup))
    err = 100 * (est - traced) / traced
    assert -MAX_UNDER_PCT <= err <= MAX_ABS_PCT, f"{model} {setup}: {err:+.2f}%"
