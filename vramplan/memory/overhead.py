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


#: the layouts that run one process per GPU and talk through NCCL
NCCL_LAYOUTS = ("ddp", "zero1", "zero2", "zero3", "fsdp")
NCCL_TERM = "overhead/nccl"


def nccl_bytes(setup: Setup, nvlink: bool) -> int:
    """What NCCL allocates on each card outside torch's allocator for the data-parallel group's
    communicator (its channels' send and receive buffers, made at the first collective): seen by
    nvidia-smi and taken from what torch can use. Measured on NVLink boards only
    (tables/overheads.json): 544 MiB a process in a group of two, 688 MiB in a larger one. The
    memory grows with NCCL's channels, which NVLink boards run many of (NVIDIA/nccl#986); a PCIe
    pair logs two, through host shared memory where P2P is off (rwth-i6/returnn#1469), and
    out-of-memory reports of eight-process PCIe runs (tables/measured/cuda_context.csv: L40S, L20)
    hold no more outside torch than one process: 0 there."""
    if not nvlink or setup.parallel not in NCCL_LAYOUTS or setup.world_size < 2:
        return 0
    consts = overhead_constants()
    return int(consts["nccl_nvlink_pair_bytes" if setup.world_size == 2 else "nccl_nvlink_group_bytes"])


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
