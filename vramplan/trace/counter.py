"""A live-storage counter: every tensor storage alive, with what made it and when.

A ``TorchDispatchMode`` sees each op's outputs; their storages are counted once, keyed by
the identity of the storage object (torch keeps one Python object per live storage) and
released by a ``weakref`` finaliser when the storage dies. The peak is the maximum of live
bytes after any op. Works the same on real tensors and on fake ones.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


@dataclass
class Live:
    nbytes: int
    creator: str  # weights | trainable_weights | forward | backward | optimizer | other
    step: int
    op: str
    shape: tuple[int, ...]
    dtype: str
    kind: str | None = None  # set once known: weights, gradients, optimizer_state, ...


@dataclass
class Counter:
    """Live bytes now, the peak, and a snapshot of what was alive at the peak."""

    live: dict[int, Live] = field(default_factory=dict)
    total: int = 0
    peak: int = 0
    peak_at: tuple[int, str] = (0, "setup")
    peak_snapshot: dict[int, Live] = field(default_factory=dict)
    phase: str = "setup"
    step: int = 0
    phase_peaks: dict[str, int] = field(default_factory=dict)
    creator_totals: dict[str, int] = field(default_factory=dict)
    timeline: list[tuple[int, int, str, dict[str, int]]] = field(default_factory=list)
    ops: int = 0
    keep_timeline: bool = True
    #: every storage made, ``(key, nbytes)``, and freed, ``(key, -1)``, in order (allocator.py)
    events: list[tuple[int, int]] = field(default_factory=list)

    def mark(self, tensor: torch.Tensor, kind: str) -> None:
        """Record what a live storage turned out to be (the peak snapshot shares the record)."""
        item = self.live.get(id(tensor.untyped_storage()))
        if item is not None:
            item.kind = kind

    def track(self, tensor: torch.Tensor, creator: str, op: str = "") -> None:
        storage = tensor.untyped_storage()
        key = id(storage)
        if key in self.live:
            return
        n = storage.nbytes()
        self.live[key] = Live(n, creator, self.step, op, tuple(tensor.shape), str(tensor.dtype).removeprefix("torch."))
        self.total += n
        self.events.append((key, n))
        self.creator_totals[creator] = self.creator_totals.get(creator, 0) + n
        weakref.finalize(storage, self._release, key)

    def _release(self, key: int) -> None:
        item = self.live.pop(key, None)
        if item is not None:
            self.total -= item.nbytes
            self.events.append((key, -1))
            self.creator_totals[item.creator] -= item.nbytes

    def after_op(self) -> None:
        self.ops += 1
        name = f"step{self.step}/{self.phase}"
        if self.total > self.phase_peaks.get(name, -1):
            self.phase_peaks[name] = self.total
        if self.total > self.peak:
            self.peak = self.total
            self.peak_at = (self.step, self.phase)
            self.peak_snapshot = dict(self.live)
        if self.keep_timeline:
            self.timeline.append((self.step, self.ops, self.phase, dict(self.creator_totals)))

    #: told each phase as it starts (``on_phase(phase, step)``): the trace's progress line
    on_phase: Callable[[str, int], None] | None = None

    def set_phase(self, phase: str, step: int) -> None:
        if self.on_phase is not None and (phase, step) != (self.phase, self.step):
            self.on_phase(phase, step)
        self.phase, self.step = phase, step


class CountingMode(TorchDispatchMode):
    """Dispatch mode that feeds a Counter with every op's outputs."""

    def __init__(self, counter: Counter) -> None:
        super().__init__()
        self.counter = counter

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        creator = self.counter.phase if self.counter.phase in ("forward", "backward", "optimizer") else "other"
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.counter.track(t, creator, str(func.overloadpacket.__name__))
        self.counter.after_op()
        return out


def count_model(net: torch.nn.Module) -> Counter:
    """A Counter that already holds the model: its parameters (``trainable_weights`` or
    ``weights``), its buffers and the k-bit tensors a harness attached (``_vramplan_quant_tensors``).
    Its ``total`` is then the trace's baseline."""
    counter = Counter(keep_timeline=False)
    for p in net.parameters():
        kind = "trainable_weights" if p.requires_grad else "weights"
        counter.track(p, kind)
        counter.mark(p, kind)
    for t in [*net.buffers(), *getattr(net, "_vramplan_quant_tensors", ())]:
        counter.track(t, "weights")
        counter.mark(t, "weights")
    return counter


def optimizer_phase(counter: Counter, net: torch.nn.Module, optimizer: Any, step: int) -> None:
    """A trainer harness's optimizer step, counted: the gradients marked as such, the step, its
    state marked, ``zero_grad(set_to_none=True)``, then the phase between steps."""
    counter.set_phase("optimizer", step)
    for p in net.parameters():
        if p.grad is not None:
            counter.mark(p.grad, "gradients")
    optimizer.step()
    for state in optimizer.state.values():
        for v in state.values():
            if isinstance(v, torch.Tensor):
                counter.mark(v, "optimizer_state")
    optimizer.zero_grad(set_to_none=True)
    counter.set_phase("between", step)
