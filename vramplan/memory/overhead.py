"""What a CUDA process spends beyond live tensors; constants come from tables/overheads.json."""

from __future__ import annotations

import json
from functools import lru_cache

from vramplan.memory.weights import BLOCK_QUANTS, quantized_linears
from vramplan.setup import Setup
from vramplan.spec import ModelSpec
from vramplan.tables import tables_dir


@lru_cache(maxsize=1)
def overhead_constants() -> dict[str, float]:
    data = json.loads((tables_dir() / "overheads.json").read_text())
    return {k: float(v["value"]) for k, v in data.items() if not k.startswith("_")}


def cuda_context_bytes() -> int:
    """CUDA context and loaded kernels: outside the allocator, seen only by nvidia-smi."""
    return int(overhead_constants()["cuda_context_bytes"])


def cublas_workspace_bytes() -> int:
    """cuBLAS + cuBLASLt workspaces, allocated through torch's caching allocator."""
    return int(overhead_constants()["cublas_workspace_bytes"])


def allocator_slack_bytes(allocated: int) -> int:
    """Reserved minus allocated at the peak beyond the cached logits' block (loss.py
    ``logits_segment_bytes``, added on its own): ``base + fraction x allocated``, rounded up
    to the 2 MiB granularity of the caching allocator's segments.

    The base is what the allocator keeps cached whatever the model's size: blocks freed by
    loading and by the first optimizer step, split segments a later request does not fit.
    Both are fitted (``vramplan.calibrate``) on published ``max_memory_reserved`` rows; with
    the logits' block taken out their slope is negative and is kept at 0, so today the slack
    is a constant. It is kept for generation too, where it may over-count a little."""
    consts = overhead_constants()
    slack = max(0, int(consts["allocator_slack_base_bytes"] + allocated * consts["allocator_slack_fraction"]))
    return -(-slack // (2 << 20)) * (2 << 20)


def dequant_workspace_bytes(spec: ModelSpec, setup: Setup, generation: bool = False) -> int:
    """Quantized matmuls dequantize one weight to 16 bits inside the kernel (invisible to a
    CPU trace): 2 B x the largest quantized linear. bitsandbytes 4-bit does so for every
    multi-token matmul (``dequantize_4bit`` materialises the weight); LLM.int8 keeps an int8
    copy plus fp16 outliers; GPTQ and AWQ training kernels dequantize for long inputs. While
    generating, GPTQ/AWQ kernels multiply packed weights directly: the term is scaled by the
    fitted ``generation_dequant_factor`` (tables/overheads.json)."""
    if setup.quant == "none":
        return 0
    largest = max((lin.in_features * lin.out_features for lin in quantized_linears(spec, setup.quant)), default=0)
    factor = overhead_constants()["generation_dequant_factor"] if generation and setup.quant in BLOCK_QUANTS else 1.0
    return round(factor * 2 * largest)
