"""The llamafactory grid: the configurations LLaMA-Factory's own SFT step is traced for
(benchmarks/trainer_trace_grid.py --trainer llamafactory, vramplan/trace/llamafactory_sft.py), where they are
recorded, and their comparison with the estimate under LLaMA-Factory's policy. No torch import:
the analytic tests read it."""

from __future__ import annotations

from typing import Any

from vramplan.trace import grids

#: two Qwen2.5 sizes x LoRA r8 / QLoRA nf4 / full x seq 512, 2048 x checkpointing x micro-batch
#: 1, 2 (bf16: full is LLaMA-Factory's ``pure_bf16``; sdpa, AdamW)
GRID: list[tuple[str, dict[str, Any]]] = grids.square()
#: beyond the square grid: full fine-tuning with LLaMA-Factory's default fp32 master weights
#: (``bf16`` without ``pure_bf16``), LoRA training the embeddings beside the adapters (an fp32
#: ``modules_to_save`` copy), no LoRA dropout, 4096 tokens, double quantization, Llama's untied
#: 128k head, and a VLM (Qwen2-VL-2B; text batches, see llamafactory_sft.py)
_EXTRA: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("qwen2.5-0.5b", GRID[16][1], {"precision": "amp-bf16"}),
    ("qwen2.5-0.5b", GRID[18][1], {"precision": "amp-bf16"}),
    ("qwen2.5-0.5b", GRID[0][1], {"trainable_extra": ["embeddings"]}),
    ("qwen2.5-0.5b", GRID[6][1], {"trainable_extra": ["embeddings"]}),
    ("qwen2.5-7b", GRID[28][1], {"lora_dropout": 0.0}),
    ("qwen2.5-7b", GRID[28][1], {"seq_len": 4096}),
    ("qwen2.5-7b", GRID[36][1], {"seq_len": 4096}),
    ("qwen2.5-7b", GRID[36][1], {"quant": "bnb-nf4-dq"}),
    ("llama-3.1-8b", GRID[28][1], {}),
    ("llama-3.1-8b", GRID[36][1], {}),
    ("qwen2-vl-2b", GRID[4][1], {}),
    ("qwen2-vl-2b", GRID[12][1], {}),
]
GRID += [(model, {**fields, **extra}) for model, fields, extra in _EXTRA]
#: where the traced grid is recorded
ROWS_FILE = "llamafactory_traces.jsonl"


def read_rows() -> list[dict[str, Any]]:
    """The recorded llamafactory traces (tables/measured/llamafactory_traces.jsonl)."""
    return grids.read_rows(ROWS_FILE)


def error_pct(row: dict[str, Any]) -> float:
    """The estimate under LLaMA-Factory's policy against the traced peak, in % (grids.error_pct)."""
    return grids.error_pct(row, "llamafactory")


def compare(rows: list[dict[str, Any]]) -> str:
    """The rows' estimate-vs-trace table (markdown) and its summary line."""
    return grids.compare(rows, "llamafactory")
