"""The recorded axolotl grid (tables/measured/axolotl_traces.jsonl, made by
benchmarks/trainer_trace_grid.py --trainer axolotl from axolotl 0.19.0's own SFT step, vramplan/trace/axolotl_sft.py)
against the estimate under axolotl's policy: every configuration within 3% over and 2% under
its trace, the median within 1%."""

from __future__ import annotations

import statistics

import pytest

from vramplan.trace.axolotl_grid import GRID, error_pct, read_rows

pytestmark = pytest.mark.analytic


def test_the_grid_covers_what_it_must() -> None:
    """Two Qwen2.5 sizes x LoRA / QLoRA / full x 512, 2048 x checkpointing x micro-batch 1, 2,
    a VLM and Llama-3.1-8B."""
    models = {m for m, _ in GRID}
    assert {"qwen2.5-0.5b", "qwen2.5-7b", "qwen2-vl-2b", "llama-3.1-8b"} <= models
    assert len(GRID) >= 40
    assert {f["method"] for _, f in GRID} == {"lora", "qlora", "full"}


def test_the_recorded_axolotl_grid_holds_the_bounds() -> None:
    rows = read_rows()
    assert len(rows) >= 40
    assert {r["trainer"] for r in rows} == {"axolotl"}
    errors = {f"{r['model']} {r['setup']}": error_pct(r) for r in rows}
    bad = {k: round(v, 2) for k, v in errors.items() if not -2.0 <= v <= 3.0}
    assert not bad, bad
    assert statistics.median(abs(v) for v in errors.values()) <= 1.0
