"""The swift grid: the configurations ms-swift's ``swift sft`` step is traced for
(benchmarks/trainer_trace_grid.py --trainer swift, vramplan/trace/swift_sft.py), where they are recorded, and their
comparison with the estimate under swift's policy. No torch import: the analytic tests read it."""

from __future__ import annotations

from typing import Any

from vramplan.trace import grids

#: the swift grid: two Qwen2.5 sizes x LoRA r8 / QLoRA nf4 / full x seq 512, 2048 x checkpointing
#: x micro-batch 1, 2 (bf16, sdpa, AdamW); benchmarks/trainer_trace_grid.py --trainer swift traces it.
GRID: list[tuple[str, dict[str, Any]]] = grids.square()
#: beyond the square grid: AMP (fp32 weights, bf16 autocast), no LoRA dropout, 4096 tokens,
#: Llama-3.1-8B (untied 128k head), a VLM (Qwen2-VL-2B: text-only batches through its
#: language model, its vision tower frozen and unused)
_EXTRA: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("qwen2.5-0.5b", GRID[4][1], {"precision": "amp-bf16"}),
    ("qwen2.5-0.5b", GRID[20][1], {"precision": "amp-bf16"}),
    ("qwen2.5-7b", GRID[28][1], {"lora_dropout": 0.0}),
    ("qwen2.5-7b", GRID[28][1], {"seq_len": 4096}),
    ("qwen2.5-7b", GRID[36][1], {"seq_len": 4096}),
    ("llama-3.1-8b", GRID[28][1], {}),
    ("llama-3.1-8b", GRID[36][1], {}),
    ("qwen2-vl-2b", GRID[4][1], {}),
    ("qwen2-vl-2b", GRID[12][1], {}),
]
GRID += [(model, {**fields, **extra}) for model, fields, extra in _EXTRA]
#: where the traced grid is recorded
ROWS_FILE = "swift_traces.jsonl"


def read_rows() -> list[dict[str, Any]]:
    """The recorded swift traces (tables/measured/swift_traces.jsonl)."""
    return grids.read_rows(ROWS_FILE)


def error_pct(row: dict[str, Any]) -> float:
    """The estimate under swift's policy against the traced peak, in % (grids.error_pct)."""
    return grids.error_pct(row, "swift")


def compare(rows: list[dict[str, Any]]) -> str:
    """The rows' estimate-vs-trace table (markdown) and its summary line."""
    return grids.compare(rows, "swift")
