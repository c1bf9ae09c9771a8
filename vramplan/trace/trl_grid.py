"""The trl grid: the configurations TRL's SFTTrainer step is traced for
(benchmarks/trainer_trace_grid.py --trainer trl, vramplan/trace/trl_sft.py), where they are recorded, and their
comparison with the estimate under TRL's policy. No torch import: the analytic tests read it."""

from __future__ import annotations

from typing import Any

from vramplan.trace import grids

#: the trl grid: two Qwen2.5 sizes x LoRA r8 / QLoRA nf4 / full x seq 512, 2048 x checkpointing
#: x micro-batch 1, 2 (bf16, sdpa, AdamW); benchmarks/trainer_trace_grid.py --trainer trl traces it.
GRID: list[tuple[str, dict[str, Any]]] = grids.square()
#: beyond the square grid: AMP (an fp32 lm_head in the fused head), no LoRA dropout, 4096
#: tokens, other families (Llama's untied 128k head, Gemma-2's soft-capped 256k one, eager)
_EXTRA: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("qwen2.5-0.5b", GRID[4][1], {"precision": "amp-bf16"}),
    ("qwen2.5-0.5b", GRID[5][1], {"precision": "amp-bf16"}),
    ("qwen2.5-7b", GRID[28][1], {"lora_dropout": 0.0}),
    ("qwen2.5-7b", GRID[28][1], {"seq_len": 4096}),
    ("qwen2.5-7b", GRID[32][1], {"seq_len": 4096}),
    ("llama-3.1-8b", GRID[28][1], {}),
    ("llama-3.1-8b", GRID[32][1], {}),
    ("gemma-2-9b", GRID[28][1], {"attention": "eager"}),  # transformers refuses sdpa for Gemma-2
]
GRID += [(model, {**fields, **extra}) for model, fields, extra in _EXTRA]
#: where the traced grid is recorded
ROWS_FILE = "trl_traces.jsonl"


def read_rows() -> list[dict[str, Any]]:
    """The recorded trl traces (tables/measured/trl_traces.jsonl)."""
    return grids.read_rows(ROWS_FILE)


def error_pct(row: dict[str, Any]) -> float:
    """The estimate under TRL's policy against the traced peak, in % (grids.error_pct)."""
    return grids.error_pct(row, "trl")


def compare(rows: list[dict[str, Any]]) -> str:
    """The rows' estimate-vs-trace table (markdown) and its summary line."""
    return grids.compare(rows, "trl")
