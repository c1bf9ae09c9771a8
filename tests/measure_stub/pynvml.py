"""Stand-in nvidia-ml-py: the process's used memory as nvidia-smi lists it, here the stand-in
allocator's reserved bytes plus a 500 MiB CUDA context."""

from __future__ import annotations

import os
import sys
import types

CONTEXT = 500 << 20


def nvmlInit() -> None:
    pass


def nvmlDeviceGetHandleByUUID(uuid: str) -> int:
    if not uuid.startswith("GPU-"):
        raise RuntimeError("NVML_ERROR_NOT_FOUND")
    return int(uuid[-1])


def nvmlDeviceGetComputeRunningProcesses(handle: int) -> list[types.SimpleNamespace]:
    cuda = sys.modules["torch"].cuda
    return [types.SimpleNamespace(pid=os.getpid(), usedGpuMemory=cuda.memory_reserved(handle) + CONTEXT)]


def nvmlDeviceGetMemoryInfo(handle: int) -> types.SimpleNamespace:
    return types.SimpleNamespace(used=nvmlDeviceGetComputeRunningProcesses(handle)[0].usedGpuMemory)
