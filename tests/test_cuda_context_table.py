"""tables/measured/cuda_context.csv: what a process held outside torch's allocator, read off real
out-of-memory messages ("this process has X memory in use. Of the allocated memory Y is allocated by
PyTorch, and Z is reserved by PyTorch but unallocated": X - Y - Z) and one idle nvidia-smi reading."""

from __future__ import annotations

import csv
import statistics

from vramplan.gpus import gpu_catalog
from vramplan.memory.overhead import cuda_context_bytes
from vramplan.tables import tables_dir
from vramplan.units import GIB


def _rows() -> list[dict[str, str]]:
    with open(tables_dir() / "measured" / "cuda_context.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_each_row_is_its_message_arithmetic_with_its_thread() -> None:
    catalog = gpu_catalog()
    for r in _rows():
        in_use, alloc, unalloc = (float(r[k]) for k in ("in_use_gib", "allocated_gib", "reserved_unallocated_gib"))
        assert abs(float(r["non_pytorch_gib"]) - (in_use - alloc - unalloc)) < 0.002, r["source"]
        assert 0 < float(r["non_pytorch_gib"]) <= in_use <= float(r["torch_total_gib"]), r["source"]
        assert r["source"].startswith("https://github.com/") and (not r["gpu"] or r["gpu"] in catalog)


def test_the_context_constant_holds_the_typical_single_process() -> None:
    """overheads.json's CUDA context is at least the median of what one process held outside the
    allocator in 13 single-process reports (0.44 GiB); the RTX 5090's 0.60 GiB is above it."""
    single = [
        float(r["non_pytorch_gib"])
        for r in _rows()
        if r["setting"].startswith("one process") and "outlier" not in r["setting"]
    ]
    assert len(single) >= 10
    assert statistics.median(single) * GIB <= cuda_context_bytes() < max(single) * GIB
