"""Decoder layers in runs of one kind, so that walks over the layers cost the runs, not the layers.

What a layer holds in backward (its saved activations, its gradients, its autocast copies) depends
only on its kind: MoE or dense, trained or frozen, recorded by autograd or not. Neighbouring
layers of one kind form a run: a dense model has one or two (freeze fine-tuning splits it where
training starts), a model with every other layer MoE has one per layer. The backward sweep
(sweep.py, for one GPU and for FSDP) takes each run in closed form.
"""

from __future__ import annotations

from dataclasses import dataclass

from vramplan.memory import activations as act
from vramplan.memory import optimizer, weights
from vramplan.memory.trainable import layer_kind_runs
from vramplan.setup import Setup
from vramplan.spec import ModelSpec


@dataclass(frozen=True, slots=True)
class Run:
    """Layers ``start`` to ``stop - 1``, all of one kind, and what each of them holds (bytes)."""

    start: int
    stop: int
    count: int  # stop - start
    recorded: bool
    copies: int  # its 16-bit autocast weight copies
    grads: int  # its gradients
    saved: int  # its saved activations without checkpointing (0 unless recorded)
    kept: int  # what it keeps until its backward: its checkpoint, or ``saved`` without checkpointing


def layer_runs(spec: ModelSpec, setup: Setup) -> list[Run]:
    """The decoder layers as runs of one kind, bottom up, with what each layer of a run holds."""
    grads = optimizer.layer_gradient_kind_bytes(spec, setup)
    ckpt = act.checkpoint_bytes(spec, setup)
    held: dict[tuple[bool, bool, bool], tuple[int, int, int, int]] = {}  # per kind of layer
    out = []
    for start, stop, moe, trains, records in layer_kind_runs(spec, *act.kind_bounds(spec, setup)):
        kind = (moe, trains, records)
        if kind not in held:
            saved = act.layer_saved_bytes(spec, setup, start) if records else 0
            kept = (ckpt if records else 0) if setup.grad_checkpointing else saved
            copies = weights.layer_autocast_copy_bytes(spec, setup, moe)
            held[kind] = (copies, grads[moe] if setup.is_lora or trains else 0, saved, kept)
        out.append(Run(start, stop, stop - start, records, *held[kind]))
    return out


def first_peak(step: int, shard_start: int, shard_step: int, n: int, count: int) -> int:
    """The first ``m`` in ``0..count-1`` where ``step·m + ceil((shard_start + shard_step·m) / n)``
    is largest: a run walked from one end, each layer adding ``step`` bytes to a total and
    ``shard_step`` to a sharded sum (``n`` ranks; ``n = 1`` and ``shard_step = 0`` for none).

    With ``shard_step = q·n + r`` (``0 <= r < n``) the total is ``(step + q)·m`` plus
    ``ceil((shard_start + r·m) / n)``, which rises by 0 or 1 a layer: below a slope of 0 the
    total never rises (the first layer is the peak), above it always rises (the last), and at 0
    it is the sharded part's first step to its final value."""
    if count <= 1:
        return 0
    q, r = divmod(shard_step, n)
    slope = step + q
    if slope < 0:
        return 0
    if slope > 0:
        return count - 1
    last = -(-(shard_start + r * (count - 1)) // n)
    if r == 0 or last == -(-shard_start // n):
        return 0
    # smallest m with shard_start + r·m > (last - 1)·n
    return ((last - 1) * n - shard_start) // r + 1
