"""A toy trainer's "own step" for tests/test_trace_trainer.py: no torch, a TraceResult whose
peak is the toy trainer's own estimate, so the plumbing around a tracer can be checked
anywhere. ``seq_len`` 13 is refused as a trainer refuses a setting; 17 crashes."""

from __future__ import annotations

from vramplan.errors import VramplanError
from vramplan.frameworks import framework
from vramplan.memory import estimate
from vramplan.memory.phases import traceable_bytes
from vramplan.models import load_model
from vramplan.setup import Setup
from vramplan.trace.result import TraceResult


def trace_sft(model: str, setup: Setup, steps: int = 2) -> TraceResult:
    if setup.seq_len == 13:
        raise VramplanError("seq_len", "the toy trainer refuses 13 tokens")
    if setup.seq_len == 17:
        raise ZeroDivisionError("the toy trainer crashed")
    try:
        policy = framework("toy").policy(setup)
    except VramplanError:  # in a child process the toy is not registered: the generic loop's
        policy = None
    peak = traceable_bytes(estimate(load_model(model), setup, policy=policy))
    return TraceResult(
        model=model,
        setup=setup,
        backend="trace",
        steps=steps,
        peak_bytes=peak,
        peak_phase="backward",
        peak_step=steps - 1,
        by_kind={"weights": peak},
        phases={f"step{steps - 1}/backward": peak},
        largest=[],
        seconds=0.0,
        versions={"toy": "1"},
    )
