"""One walk over backward: the decoder layers from the top down, a run of identical layers at a time.

While layer l runs its backward, what the GPU holds is a sum of terms that depend on l through
three running totals: the gradients of the layers above l, and the autocast copies and kept
activations (checkpoints, or everything saved) of layers 0..l. A layout (one GPU: phases.py;
FSDP: parallel.py) says what one point holds from those totals (:class:`At`), and how its
total moves from one layer of a run to the next (:class:`Descent`); this module walks the
runs (layers.py), picks in each the few layers that can be its peak, and keeps the largest
point, the first met from the top on a tie (the point after layer 0, ``end``, is met first).

Within a run every layer but its top (whose neighbour above is another run's) and layer 0
(which has no neighbour below) adds the same bytes, and at most a rounded share of sharded
bytes, so its peak is found in closed form (:func:`layers.first_peak`): each run weighs at
most three layers, whatever its length.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from vramplan.memory.layers import Run, first_peak


class At(NamedTuple):
    """A recorded run during the walk, with the running totals of the layers around it (bytes)."""

    run: Run
    above_run: Run | None  # the run right above, None for the top run
    above: int  # gradients of the layers of the runs above this one
    copies_below: int  # autocast copies of the layers of the runs below
    kept_below: int  # kept activations of the layers of the runs below

    def up_to(self, layer: int) -> int:
        """Layers of the run from its bottom up to ``layer``."""
        return layer - self.run.start + 1

    def copies(self, layer: int) -> int:
        """Autocast copies of layers 0..``layer``."""
        return self.copies_below + self.up_to(layer) * self.run.copies

    def kept(self, layer: int) -> int:
        """Kept activations of layers 0..``layer``."""
        return self.kept_below + self.up_to(layer) * self.run.kept

    def grads_above(self, layer: int) -> int:
        """Gradients of the decoder layers above ``layer``."""
        return self.above + (self.run.stop - 1 - layer) * self.run.grads

    def grads_of(self, layer: int) -> int:
        """Gradients of ``layer`` (of the run or the one above; 0 above the top layer)."""
        if layer < self.run.stop:
            return self.run.grads
        return self.above_run.grads if self.above_run is not None else 0


class Descent(NamedTuple):
    """How a point's total moves one layer down a run (below its top, above layer 0): by
    ``step`` bytes plus a sharded sum over ``shards`` ranks, rounded up, that starts at
    ``shard_start`` and moves by ``shard_step`` (:func:`layers.first_peak`)."""

    step: int
    shard_start: int = 0
    shard_step: int = 0
    shards: int = 1


Point = Callable[[At, int], dict[str, int]]


def candidates(at: At, descent: Descent) -> list[int]:
    """The layers of a run that can hold its peak, from the top down: its top, the first peak
    of the layers below it (but layer 0), and layer 0."""
    run = at.run
    top = run.stop - 1
    out = [top]
    low = max(run.start, 1)
    if top - low > 0:
        d = descent
        out.append(top - 1 - first_peak(d.step, d.shard_start, d.shard_step, d.shards, top - low))
    if run.start == 0 and top > 0:
        out.append(0)
    return out


def sweep(runs: list[Run], end: dict[str, int], point: Point, descent: Callable[[At], Descent]) -> dict[str, int]:
    """The terms at backward's worst point: ``end`` (after layer 0) or ``point(at, layer)`` for a
    layer of a recorded run, the first from the top on a tie."""
    best, best_total = end, sum(end.values())
    copies_below = sum(run.copies * run.count for run in runs)
    kept_below = sum(run.kept * run.count for run in runs)
    above = 0
    for idx in range(len(runs) - 1, -1, -1):
        run = runs[idx]
        copies_below -= run.copies * run.count
        kept_below -= run.kept * run.count
        if run.recorded:
            at = At(run, runs[idx + 1] if idx + 1 < len(runs) else None, above, copies_below, kept_below)
            for layer in candidates(at, descent(at)):
                terms = point(at, layer)
                total = sum(terms.values())
                if total > best_total:
                    best, best_total = terms, total
        above += run.grads * run.count
    return best
