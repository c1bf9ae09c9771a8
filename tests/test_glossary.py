"""Every term and phase a plan can show is explained in its table (vramplan/glossary.py), and
the table's total is the device tier."""

from __future__ import annotations

import pytest
from rich.console import Console

from vramplan import glossary, plan
from vramplan.render import plan_renderable

PLANS = [
    ("qwen2.5-7b", "4090", {}),
    ("qwen2.5-7b", "4090", {"method": "qlora", "trainer": "hf"}),
    ("gemma-2-9b", "a100-80g", {"method": "lora", "trainer": "hf"}),
    ("qwen2.5-7b", "4090", {"method": "full", "num_gpus": 4, "parallel": "zero3"}),
    ("qwen2.5-7b", "4090", {"method": "full", "num_gpus": 4, "parallel": "fsdp"}),
    ("qwen2.5-7b", "4090", {"method": "lora", "num_gpus": 2, "parallel": "ddp"}),
    ("qwen2.5-7b", "4090", {"method": "full", "num_gpus": 2, "parallel": "zero3", "offload": "optimizer+params"}),
    ("qwen2.5-7b", "4090", {"method": "full", "optimizer": "paged-adamw-8bit", "precision": "amp-bf16"}),
    ("qwen2-vl-7b", "a100-80g", {"method": "lora", "image_size": "1024x1024"}),
    ("qwen2.5-0.5b", "a100-80g", {"rl": "grpo", "vllm": "colocate"}),
    ("qwen2.5-0.5b", "a100-80g", {"rl": "grpo", "beta": 0.04}),
    ("qwen2.5-7b", "4090", {"method": "inference"}),
    ("llama-3.1-70b", "a100-80g", {"method": "qlora", "num_gpus": 2, "parallel": "device_map"}),
]


@pytest.mark.parametrize(("model", "gpu", "pinned"), PLANS, ids=[f"{m}-{p}" for m, _, p in PLANS])
def test_every_term_and_phase_is_explained(model: str, gpu: str, pinned: dict) -> None:
    p = plan(model, gpu, **pinned)
    missing = [name for name in p.terms if not glossary.term(name)]
    assert not missing, missing
    assert all(glossary.phase(ph) for ph in p.phases), list(p.phases)
    assert sum(p.terms.values()) == p.peak.device_bytes  # the table's total is the device tier


def test_the_table_has_a_total_and_a_legend() -> None:
    p = plan("qwen2.5-7b", "4090")
    console = Console(width=120, record=True)
    console.print(plan_renderable(p))
    text = console.export_text()
    assert "│ total " in text and f"{p.peak.device_bytes / 2**30:.2f}" in text.split("│ total ")[1].split("\n")[0]
    assert "* chosen, ok fits but ranks lower, x does not fit" in text
    assert f"peak at {p.peak.phase}: {glossary.phase(p.peak.phase)}" in text
