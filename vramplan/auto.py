"""``num_gpus="auto"``: the fewest GPUs (one node of up to 8, then nodes of 8) with a layout
that fits, found by planning counts with the planner's own function (``plan``, passed in)."""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from typing import Any, cast

from vramplan.errors import VramplanError
from vramplan.results import Note, Plan

#: plans one GPU count: ``plan(model, gpu, host_ram_gib=..., **fields)`` (vramplan.planner.plan).
PlanOne = Callable[..., Plan]

#: GPU counts ``num_gpus="auto"`` tries: one node of up to 8, then nodes of 8.
AUTO_GPUS = [(n, 1) for n in range(1, 9)] + [(8, m) for m in (2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)]


#: errors that mean a pinned layout cannot run on this many GPUs: ``--gpus auto`` moves on.
AUTO_SKIPS = ("parallel", "offload", "num_nodes", "fsdp_sharding")


#: set while ``--gpus auto`` weighs a GPU count: a plan that does not fit skips its suggestions.
PROBING: ContextVar[bool] = ContextVar("vramplan_probing", default=False)


def auto_gpus(plan: PlanOne, model: str, gpu: str, host_ram_gib: float | None, pinned: dict[str, Any]) -> Plan:
    """The fewest GPUs (one node of up to 8, then nodes of 8) with a layout that fits."""
    counts = AUTO_GPUS
    if "num_nodes" in pinned:  # the node count is fixed: only the GPUs per node vary
        counts = [(n, pinned["num_nodes"]) for n in range(1, 9)]

    planned: dict[tuple[int, bool], Plan | None] = {}

    def at(i: int, probe: bool = True) -> Plan | None:
        """The plan at ``counts[i]``, None when the pinned layout cannot run there; while
        probing, a plan that does not fit skips its suggestions and alternatives."""
        if (i, probe) not in planned:
            planned[i, probe] = _plan_count(plan, model, gpu, host_ram_gib, pinned, counts[i], probe)
        return planned[i, probe]

    # the fewest that fits safely (vramplan/verdict.py), else the fewest that fits at all (tight)
    found, last = fewest(counts, at, ok=lambda p: p.verdict == "fits")
    if found is None:
        found, last = fewest(counts, at)
    if found is not None:
        n, nodes = counts[found]
        p = cast(Plan, at(found))  # a plan that fits safely is the same probed or not
        if p.verdict != "fits":  # tight: with its suggestions of what fits safely
            p = cast(Plan, at(found, probe=False))
        return p.model_copy(update={"notes": [auto_fewest_note(n, nodes), *p.notes]})
    if last is None:
        raise VramplanError("num_gpus", "auto: no GPU count could run the pinned layout")
    p = cast(Plan, at(last, probe=False))  # with its suggestions
    return p.model_copy(update={"notes": [auto_none_note(counts), *p.notes]})


def auto_fewest_note(n: int, nodes: int) -> Note:
    """``--gpus auto`` found ``n`` GPUs per node on ``nodes`` nodes the fewest that fit."""
    count = "1 GPU" if n * nodes == 1 else f"{n * nodes} GPUs" + (f" ({nodes} nodes of {n})" if nodes > 1 else "")
    data = {"num_gpus": n, "num_nodes": nodes, "world_size": n * nodes}
    return Note(code="gpus.auto_fewest", data=data, text=f"--gpus auto: {count} is the fewest that fits")


def auto_none_note(counts: list[tuple[int, int]]) -> Note:
    """``--gpus auto`` weighed every count in ``counts`` and none fits. The sentence says 512, the
    largest of AUTO_GPUS, also when --num-nodes fixed fewer; ``data`` has the largest weighed."""
    data = {"max_world_size": max(n * nodes for n, nodes in counts)}
    return Note(code="gpus.auto_none", data=data, text="--gpus auto: nothing up to 512 GPUs fits")


def _plan_count(
    plan: PlanOne,
    model: str,
    gpu: str,
    host_ram_gib: float | None,
    pinned: dict[str, Any],
    count: tuple[int, int],
    probe: bool,
) -> Plan | None:
    """The plan on ``count`` (GPUs per node, nodes), None when the pinned layout cannot run
    there; probing, a plan that does not fit skips its suggestions and alternatives."""
    n, nodes = count
    fields = {**pinned, "num_gpus": n, "num_nodes": nodes}
    if n * nodes == 1:
        fields.pop("parallel", None)
        fields.pop("offload", None)
    token = PROBING.set(probe)
    try:
        return plan(model, gpu, host_ram_gib=host_ram_gib, **fields)
    except VramplanError as exc:
        if exc.field in AUTO_SKIPS:
            return None
        raise
    finally:
        PROBING.reset(token)


def fewest(
    counts: list[tuple[int, int]], at: Callable[[int], Plan | None], ok: Callable[[Plan], bool] = lambda p: p.fits
) -> tuple[int | None, int | None]:
    """``(first count that fits, last count that runs)`` as indices of ``counts`` (GPUs per
    node, nodes), the same as weighing every count in order, where ``at(i)`` plans count i
    (None: the layout cannot run there; an error raised is raised as in order).

    Across nodes (where device_map cannot run) a larger world only divides sharded state
    further and never adds to a GPU (parallel.py: every layout's terms are constant or divided
    by the ranks; host RAM per node is divided by the nodes), so there whether anything fits
    turns from no to yes at most once: those counts are searched by doubling then bisection,
    and weighed in order after all if one of them cannot run or raises. Single-node counts
    (device_map among the layouts) are weighed in order."""
    done: dict[int, Plan | VramplanError | None] = {}

    def plan_at(i: int) -> Plan | VramplanError | None:
        if i not in done:
            try:
                done[i] = at(i)
            except VramplanError as exc:
                done[i] = exc
        return done[i]

    def in_order(lo: int, hi: int) -> int | None:
        for i in range(lo, hi + 1):
            p = plan_at(i)
            if isinstance(p, VramplanError):
                raise p
            if p is not None and ok(p):
                return i
        return None

    def doubling(lo: int, hi: int) -> int | None:
        below, i, step = lo - 1, lo, 1  # below: the largest count known not to fit
        while True:
            p = plan_at(i)
            if p is None or isinstance(p, VramplanError):
                return in_order(lo, hi)
            if ok(p):
                break
            if i == hi:
                return None
            below, i, step = i, min(hi, i + step), 2 * step
        while i - below > 1:
            mid = (below + i) // 2
            p = plan_at(mid)
            if p is None or isinstance(p, VramplanError):
                return in_order(lo, hi)
            below, i = (below, mid) if ok(p) else (mid, i)
        return i

    lo = 0
    while lo < len(counts):
        multi = counts[lo][1] > 1
        hi = lo
        while hi + 1 < len(counts) and (counts[hi + 1][1] > 1) == multi:
            hi += 1
        found = doubling(lo, hi) if multi else in_order(lo, hi)
        if found is not None:
            return found, None
        lo = hi + 1
    for i in range(len(counts) - 1, -1, -1):  # nothing fits: the largest count that runs
        p = plan_at(i)
        if isinstance(p, VramplanError):
            raise p
        if p is not None:
            return None, i
    return None, None
