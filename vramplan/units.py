"""Units. Bytes inside, GiB/GB only at the edge; bits per dtype, divided last."""

from __future__ import annotations

KIB = 2**10
MIB = 2**20
GIB = 2**30
GB = 10**9

#: Storage bits per element of each dtype the memory model speaks of.
DTYPE_BITS: dict[str, int] = {
    "fp32": 32,
    "bf16": 16,
    "fp16": 16,
    "int8": 8,
    "uint8": 8,
    "bool": 8,
    "int32": 32,
    "int64": 64,
    "nf4": 4,
    "fp4": 4,
    "int4": 4,
}


def nbytes(numel: int, dtype: str) -> int:
    """Bytes of ``numel`` elements of ``dtype``; bits are multiplied first, divided last."""
    return -(-numel * DTYPE_BITS[dtype] // 8)


def gib(n_bytes: int) -> float:
    return n_bytes / GIB


def fmt_gib(n_bytes: int, digits: int = 2) -> str:
    return f"{n_bytes / GIB:.{digits}f} GiB"
