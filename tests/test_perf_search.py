"""The planner's shortcuts give the answers of weighing everything in order: ``--gpus auto``
bisects the multi-node counts (auto.fewest), and the suggestions' first fit skips a group
whose smallest micro-batch does not fit (search.first_fit). Each is held to a brute-force
reference kept here, and the monotonicity each relies on is checked on the catalog."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vramplan import auto, plan, search
from vramplan.errors import VramplanError
from vramplan.gpus import resolve_gpu
from vramplan.memory import estimate
from vramplan.memory.host import host_terms
from vramplan.models import catalog_names, load_model
from vramplan.results import Note
from vramplan.setup import make_setup


def reference_fewest(counts, at) -> tuple[int | None, int | None]:
    """Every count in order (the search ``--gpus auto`` ran before): the first that fits, else
    the last that runs."""
    last = None
    for i in range(len(counts)):
        p = at(i)
        if p is None:
            continue
        if p.fits:
            return i, None
        last = i
    return None, last


@st.composite
def count_outcomes(draw) -> tuple[list[tuple[int, int]], list[str]]:
    """GPU counts (one node, then several) and what planning each gives: a fit, no fit, a
    layout that cannot run there (skip) or an error. Across nodes fitting turns on once and
    stays on, and an error is raised at every count or none."""
    single = draw(st.integers(0, 8))
    multi = draw(st.integers(0, 12))
    outcomes = draw(st.lists(st.sampled_from(["fit", "no", "skip", "error"]), min_size=single, max_size=single))
    threshold = draw(st.integers(0, multi))
    skips = draw(st.sets(st.integers(0, max(0, multi - 1)), max_size=3)) if multi else set()
    errors = draw(st.booleans()) and draw(st.integers(0, 9)) == 0
    for j in range(multi):
        if errors:
            outcomes.append("error")
        elif j in skips:
            outcomes.append("skip")
        else:
            outcomes.append("fit" if j >= threshold else "no")
    counts = [(n + 1, 1) for n in range(single)] + [(8, m + 2) for m in range(multi)]
    return counts, outcomes


def _planner_of(outcomes: list[str], calls: list[int]):
    def at(i: int) -> Any:
        calls.append(i)
        if outcomes[i] == "error":
            raise VramplanError(f"count{i}", "refused")
        if outcomes[i] == "skip":
            return None
        return SimpleNamespace(fits=outcomes[i] == "fit")

    return at


def _answer(search, counts, outcomes) -> tuple[Any, ...]:
    calls: list[int] = []
    try:
        return search(counts, _planner_of(outcomes, calls)), calls
    except VramplanError as exc:
        return ("error", exc.field), calls


@settings(max_examples=500, deadline=None)
@given(count_outcomes())
def test_fewest_is_the_first_fit_in_order(case) -> None:
    counts, outcomes = case
    fast, calls = _answer(auto.fewest, counts, outcomes)
    slow, _ = _answer(reference_fewest, counts, outcomes)
    assert fast == slow
    multi = [i for i, (_, nodes) in enumerate(counts) if nodes > 1]
    if multi and not {"skip", "error"} & {outcomes[i] for i in multi}:
        # doubling then bisection: at most 2·log2 of the multi-node counts, not all of them
        assert len({i for i in calls if i in multi}) <= 2 * len(multi).bit_length()


def test_fewest_at_every_threshold() -> None:
    """Every place fitting can turn on across 0..12 multi-node counts, after one-node counts
    that do not fit or cannot run, and with one multi-node count that cannot run."""
    for multi in range(13):
        for threshold in range(multi + 1):
            for skip in (None, *range(multi)):
                counts = [(1, 1), (2, 1)] + [(8, m + 2) for m in range(multi)]
                outcomes = ["no", "skip"] + ["fit" if j >= threshold else "no" for j in range(multi)]
                if skip is not None:
                    outcomes[2 + skip] = "skip"
                assert _answer(auto.fewest, counts, outcomes)[0] == _answer(reference_fewest, counts, outcomes)[0]


def reference_auto(model: str, gpu: str, **pinned: Any):
    """``--gpus auto`` as it was: every count planned in full, in order."""
    last = None
    counts = auto.AUTO_GPUS
    if "num_nodes" in pinned:
        counts = [(n, pinned["num_nodes"]) for n in range(1, 9)]
    planned = []
    for n, nodes in counts:
        fields = {**pinned, "num_gpus": n, "num_nodes": nodes}
        if n * nodes == 1:
            fields.pop("parallel", None)
            fields.pop("offload", None)
        try:
            planned.append((n, nodes, plan(model, gpu, **fields)))
        except VramplanError as exc:
            if exc.field in auto.AUTO_SKIPS:
                continue
            raise
    # the fewest that fits safely, else the fewest that fits at all (tight)
    safe = [(n, nodes, p) for n, nodes, p in planned if p.verdict == "fits"]
    for n, nodes, last in safe or planned:
        if last.fits:
            count = (
                "1 GPU" if n * nodes == 1 else f"{n * nodes} GPUs" + (f" ({nodes} nodes of {n})" if nodes > 1 else "")
            )
            fewest = Note(
                code="gpus.auto_fewest",
                data={"num_gpus": n, "num_nodes": nodes, "world_size": n * nodes},
                text=f"--gpus auto: {count} is the fewest that fits",
            )
            return last.model_copy(update={"notes": [fewest, *last.notes]})
    if last is None:
        raise VramplanError("num_gpus", "auto: no GPU count could run the pinned layout")
    none = Note(
        code="gpus.auto_none",
        data={"max_world_size": max(n * nodes for n, nodes in counts)},
        text="--gpus auto: nothing up to 512 GPUs fits",
    )
    return last.model_copy(update={"notes": [none, *last.notes]})


#: a shorter count list, so that the reference (a full plan per count) stays quick.
SHORT_COUNTS = [(1, 1), (2, 1), (4, 1), (8, 1), (8, 2), (8, 3), (8, 4), (8, 6), (8, 8), (8, 12)]

AUTO_CASES = [
    ("llama-3.1-405b", "a100-80g", {"method": "full"}),  # 16 GPUs (2 nodes)
    ("llama-3.1-405b", "h100", {"method": "full", "parallel": "fsdp"}),  # 96 GPUs (12 nodes)
    ("qwen2.5-72b", "4090", {}),
    ("llama-3.1-70b", "3060", {"method": "full"}),
    ("qwen2.5-32b", "3060", {"method": "full", "parallel": "zero3"}),
    ("llama-3.1-405b", "4090", {"parallel": "fsdp", "num_nodes": 2}),
    ("qwen2.5-14b", "3060", {"parallel": "device_map"}),
    ("llama-3.1-405b", "3060", {"method": "full", "seq_len": 8192}),
    ("qwen2.5-7b", "4090", {"method": "full", "offload": "optimizer+params"}),
    ("qwen2.5-0.5b", "3060", {"rl": "grpo", "method": "full", "seq_len": 65536}),
]


@pytest.mark.parametrize(("model", "gpu", "pinned"), AUTO_CASES)
def test_auto_gpus_equals_planning_every_count(monkeypatch, model, gpu, pinned) -> None:
    monkeypatch.setattr(auto, "AUTO_GPUS", SHORT_COUNTS)
    try:
        want = reference_auto(model, gpu, **pinned).model_dump_json()
    except VramplanError as exc:
        with pytest.raises(VramplanError) as got:
            plan(model, gpu, num_gpus="auto", **pinned)
        assert (got.value.field, str(got.value)) == (exc.field, str(exc))
        return
    assert plan(model, gpu, num_gpus="auto", **pinned).model_dump_json() == want


MULTI_NODE_LAYOUTS = [
    {"parallel": "ddp"},
    {"parallel": "zero1"},
    {"parallel": "zero2"},
    {"parallel": "zero3"},
    {"parallel": "zero3", "offload": "optimizer"},
    {"parallel": "zero3", "offload": "optimizer+params"},
    {"parallel": "fsdp"},
    {"parallel": "fsdp", "fsdp_sharding": "hybrid_shard"},
    {"parallel": "fsdp", "fsdp_sharding": "shard_grad_op"},
    {"parallel": "fsdp", "offload": "optimizer+params"},
]


@pytest.mark.parametrize("name", catalog_names())
def test_more_gpus_across_nodes_never_need_more_per_gpu(name) -> None:
    """What the bisection relies on: across nodes, each layout's smallest setup (micro-batch 1,
    checkpointing) needs no more per GPU, nor host RAM per node, as nodes or GPUs per node grow."""
    spec = load_model(name)
    lora = {"lora_dropout": 0.0} if spec.moe is not None else {}  # PEFT refuses dropout on experts
    if spec.all_linear_refused:  # Llama 4: all-linear's router adapter breaks the forward
        lora["lora_targets"] = ",".join(lin.name for lin in spec.attention)
    grids = [[(8, m) for m in (2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)], [(n, 3) for n in range(1, 9)]]
    for layout in MULTI_NODE_LAYOUTS:
        for method in ("full", "lora"):
            for grid in grids:
                device, host = [], []
                for n, nodes in grid:
                    extra = lora if method == "lora" else {}
                    s = make_setup(method=method, num_gpus=n, num_nodes=nodes, micro_batch=1, **layout, **extra)
                    device.append(estimate(spec, s).device_bytes)
                    host.append(sum(host_terms(spec, s).values()))
                assert device == sorted(device, reverse=True), (layout, method, grid)
                assert host == sorted(host, reverse=True), (layout, method, grid)


def reference_first_fit(spec, gpu, pinned, host=None):
    """The suggestions' first fit as it was: every candidate in order."""
    for fields in search.candidates(pinned, gpu):
        try:
            setup, est, fits = search.evaluate(spec, gpu, fields, host)
        except VramplanError:
            return None
        if fits:
            return setup, est
    return None


FIRST_FIT_PINS = [
    {},
    {"seq_len": 16384},
    {"method": "full", "seq_len": 8192, "micro_batch": 4},
    {"num_gpus": 4},
    {"num_gpus": 8, "num_nodes": 2, "method": "full"},
    {"rl": "grpo", "num_generations": 4},
    {"grad_checkpointing": False, "attention": "eager", "seq_len": 4096},
]


@pytest.mark.parametrize("name", ["qwen2.5-7b", "llama-3.1-70b", "qwen3-30b-a3b", "qwen2-vl-7b"])
@pytest.mark.parametrize("gpu", ["3060", "a100-80g"])
def test_first_fit_equals_weighing_every_candidate(name, gpu) -> None:
    spec, card = load_model(name), resolve_gpu(gpu)
    for pinned in FIRST_FIT_PINS:
        if spec.moe is not None:
            pinned = {**pinned, "lora_targets": "q_proj,k_proj,v_proj,o_proj"}
        want = reference_first_fit(spec, card, pinned)
        got = search.first_fit(spec, card, pinned)
        assert (got is None) == (want is None), pinned
        if got is not None and want is not None:
            assert got[0] == want[0] and got[1] == want[1], pinned
