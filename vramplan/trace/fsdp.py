"""Trace FSDP2 (``torch.distributed.fsdp.fully_shard``) training steps on the CPU: rank 0 of
an ``N``-rank job, with fake tensors and torch's fake process group, no GPU and no peers.

As torchtitan's memory estimator does on a GPU: ``dist.init_process_group("fake", ...)``
with a ``FakeStore`` gives rank 0 a world of ``N`` whose collectives return at once without
touching data; FSDP2 still allocates everything it would allocate for them (the flat
all-gather output of a unit, its unsharded parameters, the reduce-scatter input and output),
so the live-storage counter sees the real buffers. The model is built as the single-GPU
harness builds it (``build.build``: catalog config, random weights, PEFT, gradient
checkpointing, the Setup's dtypes), then each decoder layer (the model's
``_no_split_modules``) is wrapped with ``fully_shard`` and the root (embedding, final norm,
lm_head) last, with ``reshard_after_forward`` True for full_shard and False for
shard_grad_op, and the default ``MixedPrecisionPolicy`` (parameters keep their dtype).
accelerate's FSDP2 plugin differs in two ways this harness does not copy: with mixed
precision on it upcasts trainable parameters to fp32 and gathers them in bf16, and it wraps
an untied embedding alone and [final norm, lm_head] as a unit kept gathered after forward.

Traps (each gave a wrong number until fixed; ``tests/test_fsdp_trace.py`` checks the
counter against the CPU allocator on a real run):
- FSDP2 frees and re-allocates unsharded parameters by resizing their storages in place
  (``_fsdp_param.free_storage``/``alloc_storage``: ``UntypedStorage.resize_``), which no
  dispatch mode sees: ``counted_storage_resizes`` reports them to the counter, or a freed
  layer stays counted at full size.
- The optimizer steps on DTensors, which reach a dispatch mode as one op whose outputs are
  wrappers reporting the global size: ``ShardedCountingMode`` counts their local shards.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils._pytree import tree_flatten

from vramplan.errors import VramplanError
from vramplan.models import load_config
from vramplan.setup import Setup
from vramplan.trace.build import Built, build, make_optimizer
from vramplan.trace.counter import Counter, CountingMode
from vramplan.trace.result import TraceResult
from vramplan.trace.run import (
    Progress,
    _ids_maker,
    _result,
    counted_rng_state,
    cuda_dropout,
    refuse_if_too_big,
    run_steps,
    unpacked_batches,
)


def check_fsdp_traceable(config: dict[str, Any], setup: Setup) -> None:
    """Refuse what this harness does not trace, with the reason."""
    if setup.parallel != "fsdp":
        raise VramplanError("parallel", "the FSDP harness traces --parallel fsdp")
    if setup.fsdp_sharding == "hybrid_shard" or setup.num_nodes > 1:
        raise VramplanError(
            "fsdp_sharding", "the FSDP harness traces one node, full_shard or shard_grad_op (not hybrid_shard)"
        )
    if setup.offload != "none":
        raise VramplanError("offload", "the FSDP harness keeps everything on the device (no CPU offload)")
    if setup.method == "qlora":
        raise VramplanError("method", "the FSDP harness traces full, freeze and lora (16/32-bit weights)")
    if "vision_config" in config:
        raise VramplanError("model", "the FSDP harness traces text models")
    if setup.num_gpus < 2:
        raise VramplanError("num_gpus", "FSDP over one GPU: trace with --parallel none")


@contextlib.contextmanager
def fake_world(world_size: int, rank: int = 0) -> Iterator[Any]:
    """torch.distributed with the fake backend (rank ``rank`` of ``world_size``, no peers)
    and a 1-D CPU device mesh; destroyed on exit so another world can start in this process."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.testing._internal.distributed.fake_pg import FakeStore

    if dist.is_initialized():
        raise VramplanError("parallel", "torch.distributed is already initialised in this process")
    dist.init_process_group("fake", rank=rank, world_size=world_size, store=FakeStore())
    try:
        yield init_device_mesh("cpu", (world_size,))
    finally:
        dist.destroy_process_group()


@contextlib.contextmanager
def counted_storage_resizes(counter: Counter) -> Iterator[None]:
    """Report in-place storage resizes (FSDP2's free/alloc of unsharded parameters) to the
    counter: the live record is replaced (not mutated, so an earlier peak snapshot keeps
    what it saw) and the peak is re-read after a growth."""
    original = torch.UntypedStorage.resize_

    def resize_(storage: Any, size: int) -> Any:
        out = original(storage, size)
        key = id(storage)
        item = counter.live.get(key)
        if item is None:
            return out
        delta = int(size) - item.nbytes
        if delta:
            counter.live[key] = dataclasses.replace(item, nbytes=int(size))
            counter.total += delta
            counter.creator_totals[item.creator] += delta
            counter.after_op()
        return out

    own = "resize_" in vars(torch.UntypedStorage)  # else inherited from torch._C.StorageBase
    setattr(torch.UntypedStorage, "resize_", resize_)  # noqa: B010
    try:
        yield
    finally:
        if own:
            setattr(torch.UntypedStorage, "resize_", original)  # noqa: B010
        else:
            delattr(torch.UntypedStorage, "resize_")


class ShardedCountingMode(CountingMode):
    """``CountingMode`` for DTensors: an op on DTensors (the optimizer step on sharded
    parameters) reaches this mode as one op whose outputs are DTensor wrappers, which report
    the global size; its local ops run below the mode. What rank 0 holds is each output's
    local tensor, so that is what is counted."""

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        creator = self.counter.phase if self.counter.phase in ("forward", "backward", "optimizer") else "other"
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.counter.track(_local(t), creator, str(func.overloadpacket.__name__))
        self.counter.after_op()
        return out


def decoder_layers(model: Any) -> list[Any]:
    """The modules FSDP wraps one by one: the classes the model names in ``_no_split_modules``
    (accelerate's ``TRANSFORMER_BASED_WRAP`` default), found under any PEFT wrapper."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    names = set(getattr(base, "_no_split_modules", None) or [])
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise VramplanError("model", f"{type(base).__name__} names no decoder layer class to wrap with FSDP")
    return layers


def shard(model: Any, mesh: Any, setup: Setup) -> None:
    """``fully_shard`` each decoder layer, then the root (embedding, final norm, lm_head)."""
    from torch.distributed.fsdp import fully_shard

    reshard = setup.fsdp_sharding == "full_shard"
    for layer in decoder_layers(model):
        fully_shard(layer, mesh=mesh, reshard_after_forward=reshard)
    fully_shard(model, mesh=mesh, reshard_after_forward=reshard)


def _local(t: Any) -> Any:
    """The rank's own tensor of a DTensor (itself otherwise)."""
    return getattr(t, "_local_tensor", t)


def build_sharded(config: dict[str, Any], setup: Setup, mesh: Any, *, fake: bool, fake_mode: Any) -> Built:
    """The model as the single-GPU harness builds it, sharded with FSDP2, and its optimizer
    over the sharded (DTensor) parameters, made after sharding as trainers make it."""
    one = setup.model_copy(update={"parallel": "none", "num_gpus": 1, "fsdp_sharding": "full_shard"})
    built = build(config, one, fake=fake, device="cpu", fake_mode=fake_mode)
    shard(built.model, mesh, setup)
    with fake_mode if fake else contextlib.nullcontext():
        optimizer = make_optimizer([p for p in built.model.parameters() if p.requires_grad], setup)
    return Built(model=built.model, optimizer=optimizer, autocast_dtype=built.autocast_dtype, notes=built.notes)


def trace_fsdp(
    model: str,
    setup: Setup,
    steps: int = 2,
    *,
    fake: bool = True,
    progress: Progress | None = None,
    keep_timeline: bool = False,
) -> TraceResult:
    """Trace ``steps`` FSDP2 training steps of rank 0 in a fake world of ``setup.num_gpus``
    ranks: the peak and per-phase peaks of rank 0's live bytes (the phases of
    ``run.trace``). ``fake=False`` runs them for real on the CPU (tiny models, the oracle;
    the fake collectives leave the gathered values uninitialised, which changes no size)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    say = progress or (lambda _msg: None)
    name, config = load_config(model)
    check_fsdp_traceable(config, setup)
    if not fake:
        refuse_if_too_big(model, setup)
    t0 = time.perf_counter()
    fake_mode = FakeTensorMode(allow_non_fake_inputs=True) if fake else None
    with fake_world(setup.num_gpus) as mesh, unpacked_batches(), cuda_dropout():
        say(f"building the model, sharded over {setup.num_gpus} fake ranks")
        built = build_sharded(config, setup, mesh, fake=fake, fake_mode=fake_mode)
        counter = Counter(keep_timeline=keep_timeline)
        for p in built.model.parameters():
            kind = "trainable_weights" if p.requires_grad else "weights"
            counter.track(_local(p), kind)
            counter.mark(_local(p), kind)
        for b in built.model.buffers():
            counter.track(_local(b), "weights")
            counter.mark(_local(b), "weights")
        baseline = counter.total
        make_ids = _ids_maker(int(config["vocab_size"]), setup, "cpu", fake_mode)
        say(f"running {steps} step(s)")
        mode = fake_mode if fake_mode is not None else contextlib.nullcontext()
        with mode, ShardedCountingMode(counter), counted_rng_state(counter), counted_storage_resizes(counter):
            _run_sharded(built, setup, steps, counter, make_ids)
    seconds = time.perf_counter() - t0
    result = _result(name, setup, "trace" if fake else "cpu", steps, counter, built, seconds)
    notes = [*result.notes, f"FSDP2 (fully_shard), rank 0 of {setup.num_gpus}, fake process group"]
    return result.model_copy(update={"baseline_bytes": baseline, "notes": notes})


def _run_sharded(built: Built, setup: Setup, steps: int, counter: Counter, make_ids: Any) -> None:
    """Run steps, marking rank 0's gradient shards and optimizer state as they appear."""
    original_step = built.optimizer.step

    def step_and_note(*args: Any, **kwargs: Any) -> Any:
        for p in built.model.parameters():
            if p.grad is not None:
                counter.mark(_local(p.grad), "gradients")
        out = original_step(*args, **kwargs)
        for state in built.optimizer.state.values():
            for v in state.values():
                if isinstance(v, torch.Tensor):
                    counter.mark(_local(v), "optimizer_state")
        return out

    def sync_on_last(last: bool) -> None:
        # transformers' Trainer accumulates under accelerate's no_sync: FSDP2 keeps whole
        # gradients until the step's last micro-batch reduce-scatters them
        built.model.set_requires_gradient_sync(last)

    built.optimizer.step = step_and_note
    try:
        run_steps(built, setup, steps, "cpu", counter, make_ids, sync_on_last)
    finally:
        built.optimizer.step = original_step


def cpu_profiler_peak_fsdp(model: str, setup: Setup, steps: int = 2) -> int:
    """Run the FSDP2 steps for real on the CPU under ``torch.profiler`` (profile_memory) and
    return the allocator's peak above what existed before the first step: the oracle the
    counter (with its storage-resize accounting) must match."""
    from torch.profiler import ProfilerActivity, profile

    _name, config = load_config(model)
    check_fsdp_traceable(config, setup)
    refuse_if_too_big(model, setup)
    with fake_world(setup.num_gpus) as mesh, unpacked_batches(), cuda_dropout():
        built = build_sharded(config, setup, mesh, fake=False, fake_mode=None)
        make_ids = _ids_maker(int(config["vocab_size"]), setup, "cpu", None)
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            run_steps(built, setup, steps, "cpu", None, make_ids)
    return allocator_peak(prof)


def allocator_peak(prof: Any) -> int:
    """Peak of the CPU allocator's live bytes over a profile, from its raw allocation
    events (resizes included: a storage resize is an allocation and a free)."""
    live = peak = 0
    events = sorted(
        (e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
        key=lambda e: e.start_ns(),
    )
    for e in events:
        live += e.nbytes()
        peak = max(peak, live)
    return peak
