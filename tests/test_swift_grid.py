"""The recorded swift grid (tables/measured/swift_traces.jsonl, by benchmarks/trainer_trace_grid.py --trainer swift):
ms-swift's own ``swift sft`` step traced under fake tensors (vramplan/trace/swift_sft.py), held against the
estimate under swift's policy (vramplan/frameworks/swift.py)."""

from __future__ import annotations

import statistics

import pytest

from vramplan.trace.swift_grid import GRID, error_pct, read_rows

pytestmark = pytest.mark.analytic

MAX_UNDER_PCT, MAX_OVER_PCT, MAX_MEDIAN_PCT = 2.0, 3.0, 1.0


def test_the_recorded_swift_grid_holds_the_bounds() -> None:
    """At least 40 traced configurations, every one within 3% over and 2% under its trace, the median
    |error| within 1%."""
    rows = read_rows()
    assert len(rows) >= 40
    errors = {f"{r['model']} {r['setup']}": error_pct(r) for r in rows}
    bad = {k: round(v, 2) for k, v in errors.items() if not -MAX_UNDER_PCT <= v <= MAX_OVER_PCT}
    assert not bad, bad
    assert statistics.median(abs(v) for v in errors.values()) <= MAX_MEDIAN_PCT


def test_the_rows_are_the_grid_traced_by_swift() -> None:
    """Every recorded row is a grid configuration traced by ms-swift 4.6 (no stray or stale rows), and the
    grid's kinds are all there: both Qwen2.5 sizes, LoRA / QLoRA / full, the VLM and Llama-3.1-8B."""
    import json

    grid = {(m, json.dumps(f, sort_keys=True)) for m, f in GRID}
    rows = read_rows()
    assert all((r["model"], json.dumps(r["setup"], sort_keys=True)) in grid for r in rows)
    assert {r["trainer"] for r in rows} == {"swift"}
    assert {r["versions"]["ms-swift"] for r in rows} == {"4.6.0"}
    seen = {(r["model"], r["setup"]["method"]) for r in rows}
    for want in [(m, k) for m in ("qwen2.5-0.5b", "qwen2.5-7b") for k in ("lora", "qlora", "full")]:
        assert want in seen, want
    assert {"qwen2-vl-2b", "llama-3.1-8b"} <= {r["model"] for r in rows}
