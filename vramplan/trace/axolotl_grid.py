"""The axolotl grid: the configurations axolotl's own SFT step is traced for
(benchmarks/trainer_trace_grid.py --trainer axolotl, vramplan/trace/axolotl_sft.py), where they are recorded, and
their comparison with the estimate under axolotl's policy. No torch import: the analytic tests
read it."""

from __future__ import annotations

from typing import Any

from vramplan.trace import grids

#: the axolotl grid: two Qwen2.5 sizes x LoRA r8 / QLoRA nf4 / full x seq 512, 2048 x
#: checkpointing x micro-batch 1, 2 (bf16, sdpa, AdamW); benchmarks/trainer_trace_grid.py --trainer axolotl traces it.
GRID: list[tuple[str, dict[str, Any]]] = grids.square()
#: the language model's linears by name (the emitter writes them as a regular expression over
#: ``language_model`` for a VLM, all-linear or not: axolotl's ``lora_target_linear`` would also
#: name the vision merger's ``Sequential`` indices, which PEFT refuses; frameworks/files/axolotl.py)
_TEXT_LINEARS = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
#: beyond the square grid: a VLM on text-only batches (Qwen2-VL-2B: LoRA and QLoRA on its language
#: model; not full fine-tuning, whose vision tower gets no gradient without images), Llama's untied 128k head,
#: no LoRA dropout, 4096 tokens, ``lora_modules_to_save`` copies
_EXTRA: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("qwen2-vl-2b", GRID[0][1], {"lora_targets": _TEXT_LINEARS}),
    ("qwen2-vl-2b", GRID[4][1], {"lora_targets": _TEXT_LINEARS}),
    ("qwen2-vl-2b", GRID[12][1], {"lora_targets": _TEXT_LINEARS}),
    ("qwen2-vl-2b", GRID[6][1], {"lora_targets": _TEXT_LINEARS}),
    ("llama-3.1-8b", GRID[28][1], {}),
    ("llama-3.1-8b", GRID[36][1], {}),
    ("qwen2.5-7b", GRID[28][1], {"lora_dropout": 0.0}),
    ("qwen2.5-7b", GRID[36][1], {"seq_len": 4096}),
    ("qwen2.5-0.5b", GRID[0][1], {"trainable_extra": ["embeddings", "lm_head"]}),  # modules_to_save, tied
    ("qwen2.5-7b", GRID[36][1], {"trainable_extra": ["lm_head"]}),  # a QLoRA modules_to_save copy
]
GRID += [(model, {**fields, **extra}) for model, fields, extra in _EXTRA]
#: where the traced grid is recorded
ROWS_FILE = "axolotl_traces.jsonl"


def read_rows() -> list[dict[str, Any]]:
    """The recorded axolotl traces (tables/measured/axolotl_traces.jsonl)."""
    return grids.read_rows(ROWS_FILE)


def error_pct(row: dict[str, Any]) -> float:
    """The estimate under axolotl's policy against the traced peak, in % (grids.error_pct)."""
    return grids.error_pct(row, "axolotl")


def compare(rows: list[dict[str, Any]]) -> str:
    """The rows' estimate-vs-trace table (markdown) and its summary line."""
    return grids.compare(rows, "axolotl")
