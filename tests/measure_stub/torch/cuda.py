"""Stand-in ``torch.cuda``: the caching allocator's counters as torch keeps them.

``malloc(n)`` adds to the allocated bytes; reserved memory grows to cover them in 64 MiB
segments and, as the caching allocator's, never shrinks (no ``empty_cache``); the peaks are the
maxima since the last ``reset_peak_memory_stats``. A request past the card's capacity raises
``OutOfMemoryError`` with torch 2.x's message (c10/cuda/CUDACachingAllocator.cpp)."""

from __future__ import annotations

import os
import types

MIB = 1 << 20
SEGMENT = 64 * MIB
NAME = os.environ.get("STUB_GPU_NAME", "NVIDIA GeForce RTX 4090")
TOTAL = int(os.environ.get("STUB_GPU_TOTAL", "25247965184"))
COUNT = 2


class OutOfMemoryError(RuntimeError):
    pass


_initialized = False
_device = 0
_allocated = [0] * COUNT
_reserved = [0] * COUNT
_peak_allocated = [0] * COUNT
_peak_reserved = [0] * COUNT
_ooms = [0] * COUNT


def _index(device: object) -> int:
    return _device if device is None else int(device)  # type: ignore[call-overload]


def is_available() -> bool:
    return True


def is_initialized() -> bool:
    return _initialized


def init() -> None:
    global _initialized
    _initialized = True


def device_count() -> int:
    return COUNT


def set_device(device: int) -> None:
    global _device
    init()
    _device = int(device)


def current_device() -> int:
    return _device


def get_device_properties(device: int) -> types.SimpleNamespace:
    return types.SimpleNamespace(name=NAME, total_memory=TOTAL, uuid=f"5eb0c0de-0000-0000-0000-00000000000{device}")


def _format(n: int) -> str:
    return f"{n / (1 << 30):.2f} GiB" if n > MIB * 1024 else f"{n / MIB:.2f} MiB"


def malloc(n: int, device: int | None = None) -> None:
    init()
    d = _index(device)
    need = _allocated[d] + n
    if need > TOTAL - 512 * MIB:
        _ooms[d] += 1
        free = TOTAL - 512 * MIB - _reserved[d]
        raise OutOfMemoryError(
            f"CUDA out of memory. Tried to allocate {_format(n)}. GPU {d} has a total capacity of {_format(TOTAL)}"
            f" of which {_format(free)} is free. Including non-PyTorch memory, this process has"
            f" {_format(_reserved[d] + 512 * MIB)} memory in use. Of the allocated memory {_format(_allocated[d])}"
            f" is allocated by PyTorch, and {_format(_reserved[d] - _allocated[d])} is reserved by PyTorch but"
            " unallocated. If reserved but unallocated memory is large try setting"
            " PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation."
        )
    _allocated[d] = need
    if need > _reserved[d]:
        _reserved[d] = -(-need // SEGMENT) * SEGMENT
    _peak_allocated[d] = max(_peak_allocated[d], _allocated[d])
    _peak_reserved[d] = max(_peak_reserved[d], _reserved[d])


def free(n: int, device: int | None = None) -> None:
    _allocated[_index(device)] -= n


def memory_allocated(device: object = None) -> int:
    return _allocated[_index(device)]


def memory_reserved(device: object = None) -> int:
    return _reserved[_index(device)]


def max_memory_allocated(device: object = None) -> int:
    return _peak_allocated[_index(device)] if _initialized else 0


def max_memory_reserved(device: object = None) -> int:
    return _peak_reserved[_index(device)] if _initialized else 0


def reset_peak_memory_stats(device: object = None) -> None:
    d = _index(device)
    _peak_allocated[d] = _allocated[d]
    _peak_reserved[d] = _reserved[d]


def memory_stats(device: object = None) -> dict[str, int]:
    return {"num_ooms": _ooms[_index(device)]}


memory = types.SimpleNamespace(reset_peak_memory_stats=reset_peak_memory_stats)
