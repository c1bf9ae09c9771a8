"""What a trace or a measurement reports. Plain pydantic: no torch needed to read one."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from vramplan.setup import Setup

#: What a CPU trace cannot see; compare a trace with the planner's ``allocated`` tier only.
NOT_INCLUDED = (
    "CUDA context (outside the allocator)",
    "cuBLAS/cuBLASLt workspaces",
    "caching-allocator rounding and slack in peak_bytes (simulated_reserved_bytes replays them)",
    "kernel-internal temporaries (bitsandbytes in-kernel dequantization, flash workspaces)",
)

#: Kinds of memory at the peak, in the order they are reported.
KINDS = ("weights", "trainable_weights", "gradients", "optimizer_state", "activations", "temporaries")


class Allocation(BaseModel):
    model_config = ConfigDict(frozen=True)
    nbytes: int
    kind: str
    op: str
    shape: list[int]
    dtype: str


class TimelinePoint(BaseModel):
    """Live bytes after one op, split by what created them."""

    model_config = ConfigDict(frozen=True)
    index: int
    step: int
    phase: str
    by_creator: dict[str, int]


class TraceResult(BaseModel):
    """One traced (or measured) run of ``steps`` training steps."""

    model_config = ConfigDict(frozen=True)
    model: str
    setup: Setup
    backend: str  # trace | cpu | cuda
    #: whose training step ran: a trainer's own (``trl``, ``swift``, ...: trace/trainer.py), or
    #: empty for vramplan's generic loop (trace/run.py)
    trainer: str = ""
    steps: int
    outcome: str = "ok"  # ok | oom
    peak_bytes: int
    baseline_bytes: int = 0  # live before the first step: weights, buffers, quantization state
    peak_phase: str
    peak_step: int
    by_kind: dict[str, int]
    phases: dict[str, int]  # "step<i>/<phase>" -> peak bytes inside that phase
    largest: list[Allocation]
    timeline: list[TimelinePoint] = []
    reserved_bytes: int | None = None  # cuda backend only
    # the traced storages replayed through torch's caching allocator (trace/allocator.py)
    simulated_reserved_bytes: int | None = None
    # the least a card must offer for them (wholly free segments released before out-of-memory)
    simulated_needed_bytes: int | None = None
    device_bytes: int | None = None  # cuda backend only (NVML)
    seconds: float
    versions: dict[str, str]
    not_included: list[str] = list(NOT_INCLUDED)
    notes: list[str] = []
