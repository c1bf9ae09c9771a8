"""Run training steps of a built model and read the peak: traced (fake tensors, no GPU),
for real on the CPU (oracle), or for real on a CUDA card."""

from __future__ import annotations

import contextlib
import importlib.metadata as md
import os
import platform
import time
from collections.abc import Callable
from typing import Any

import torch

from vramplan.errors import VramplanError
from vramplan.models import load_config, load_model
from vramplan.setup import Setup
from vramplan.trace.allocator import replay
from vramplan.trace.build import Built, build
from vramplan.trace.counter import Counter, CountingMode, Live
from vramplan.trace.preflight import check_steps, refuse_if_too_big
from vramplan.trace.result import KINDS, Allocation, TimelinePoint, TraceResult
from vramplan.trace.vlm import ImageBatch
from vramplan.trace.vlm_fixed import FixedImageBatch, OneSequenceImageBatch

Progress = Callable[[str], None]
MAX_TIMELINE_POINTS = 1500


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "peft", "accelerate", "bitsandbytes", "vramplan"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


@contextlib.contextmanager
def cuda_dropout() -> Any:
    """Dropout as CUDA runs it: ``F.dropout`` on a CUDA tensor takes the fused
    ``native_dropout`` kernel, which keeps a bool mask (1 B/element); on the CPU it would
    multiply by an input-sized noise tensor (4 B/element in fp32). ``native_dropout`` exists
    on the CPU too, so the traced step keeps what a GPU keeps."""
    import torch.nn.functional as F

    original = F.dropout

    def dropout(input: Any, p: float = 0.5, training: bool = True, inplace: bool = False) -> Any:
        if training and 0 < p < 1 and not inplace:
            return torch.native_dropout(input, p, True)[0]
        return original(input, p, training, inplace)

    F.dropout = dropout
    try:
        yield
    finally:
        F.dropout = original


@contextlib.contextmanager
def cuda_int8_path() -> Any:
    """LLM.int8 as CUDA runs it: in training, ``bitsandbytes.matmul`` sends CPU tensors to
    ``MatMul8bitFp`` (dequantize, then an autocast matmul) but CUDA tensors to
    ``MatMul8bitLt`` (int8 matmul, output in the input's dtype); the trace takes the CUDA one."""
    try:
        import bitsandbytes as bnb
        from bitsandbytes.autograd._functions import MatMul8bitLt, MatmulLtState
    except ImportError:
        yield
        return
    original = bnb.matmul

    from torch._subclasses.fake_tensor import FakeTensor

    def matmul(A: Any, B: Any, out: Any = None, state: Any = None, threshold: float = 0.0, bias: Any = None) -> Any:
        state = state or MatmulLtState()
        if threshold > 0.0:
            state.threshold = threshold
        if isinstance(A, FakeTensor):
            # which columns are outliers depends on the values, which fake tensors do not have:
            # traced without the (t x outliers) fp16 side matrix
            state.threshold = 0.0
        return MatMul8bitLt.apply(A, B, out, bias, state)

    bnb.matmul = matmul
    try:
        yield
    finally:
        bnb.matmul = original


@contextlib.contextmanager
def counted_rng_state(counter: Counter) -> Any:
    """Gradient checkpointing saves the CPU RNG state (a 5 KB byte tensor per checkpoint)
    through ``torch.get_rng_state``, which makes its tensor outside the dispatcher: count it."""
    original = torch.get_rng_state

    def get_rng_state() -> Any:
        state = original()
        counter.track(state, counter.phase, "get_rng_state")
        return state

    torch.get_rng_state = get_rng_state
    try:
        yield
    finally:
        torch.get_rng_state = original


@contextlib.contextmanager
def unpacked_batches() -> Any:
    """transformers treats fake tensors as tracing and then assumes packed sequences, which
    builds an explicit mask and expands K/V; our batches are unpacked and unpadded, so the
    real (mask-free) path is restored by reporting 'no packed sequences'."""
    import transformers.masking_utils as mu

    original = mu.find_packed_sequence_indices
    mu.find_packed_sequence_indices = lambda position_ids: None
    try:
        yield
    finally:
        mu.find_packed_sequence_indices = original


@contextlib.contextmanager
def grouped_mm_any_dtype() -> Any:
    """MoE experts whose weights are not bf16 (AMP's fp32 master weights, fp16, QLoRA's
    upcast by ``prepare_model_for_kbit_training``): transformers sends them to
    ``torch.nn.functional.grouped_mm`` (integrations/moe.py ``_grouped_mm``), whose meta
    kernel accepts bf16 only (torch/_meta_registrations.py ``_meta_grouped_mm_common``), so a
    fake trace stopped there. Fake tensors take transformers' own fallback op instead
    (``transformers::grouped_mm_fallback``, with a fake kernel and autograd), which returns
    the same output and saves the same input and weight for backward."""
    try:
        import transformers.integrations.moe as moe
    except ImportError:
        yield
        return
    from torch._subclasses.fake_tensor import FakeTensor

    original = moe._can_use_grouped_mm

    def can_use(input: Any, weight: Any, offs: Any) -> bool:
        if isinstance(weight, FakeTensor) and weight.dtype != torch.bfloat16:
            return False
        return original(input, weight, offs)

    moe._can_use_grouped_mm = can_use
    try:
        yield
    finally:
        moe._can_use_grouped_mm = original


def _forward_loss(built: Built, ids: Any, device: str) -> Any:
    """One forward as HF Trainer runs it: under autocast when mixed precision is on, the
    outputs converted to fp32 (accelerate ``convert_outputs_to_fp32``) and dropped once the
    loss is taken."""
    ctx = (
        torch.autocast(device_type=device, dtype=built.autocast_dtype)
        if built.autocast_dtype is not None
        else contextlib.nullcontext()
    )
    with ctx:
        out = built.model(**ids) if isinstance(ids, dict) else built.model(input_ids=ids, labels=ids)
    if built.autocast_dtype is not None:
        from accelerate.utils import convert_to_fp32

        out = convert_to_fp32(out)
    loss = out.loss
    del out
    return loss


def run_steps(
    built: Built,
    setup: Setup,
    steps: int,
    device: str,
    counter: Counter | None,
    make_ids: Callable[[], Any],
    before_micro_batch: Callable[[bool], None] | None = None,
) -> None:
    """``steps`` optimizer steps of ``grad_accum`` micro-batches each; ``before_micro_batch``
    is told whether the coming micro-batch is the step's last (the trainer's ``no_sync``)."""
    check_steps(steps)

    def phase(name: str, step: int) -> None:
        if counter is not None:
            counter.set_phase(name, step)

    for step in range(steps):
        for micro in range(setup.grad_accum):
            if before_micro_batch is not None:
                before_micro_batch(micro == setup.grad_accum - 1)
            ids = make_ids()
            phase("forward", step)
            loss = _forward_loss(built, ids, device)
            phase("backward", step)
            loss.backward()
            del loss, ids
        phase("optimizer", step)
        built.optimizer.step()
        built.optimizer.zero_grad(set_to_none=True)
        phase("between", step)


def _kind(item: Live) -> str:
    """What a storage alive at the peak was: known kinds were marked when they became known
    (parameters up front, ``.grad`` before each optimizer step, optimizer state after it);
    the rest was made by forward (saved activations) or is a temporary."""
    if item.kind is not None:
        return item.kind
    return "activations" if item.creator == "forward" else "temporaries"


def _timeline(counter: Counter) -> list[TimelinePoint]:
    points = counter.timeline
    stride = max(1, len(points) // MAX_TIMELINE_POINTS)
    out = []
    for start in range(0, len(points), stride):
        chunk = points[start : start + stride]
        step, idx, phase, totals = max(chunk, key=lambda p: sum(p[3].values()))
        out.append(TimelinePoint(index=idx, step=step, phase=phase, by_creator={k: v for k, v in totals.items() if v}))
    return out


def _ids_maker(spec_vocab: int, setup: Setup, device: str, fake_mode: Any) -> Callable[[], Any]:
    def make() -> Any:
        ctx = fake_mode if fake_mode is not None else contextlib.nullcontext()
        with ctx:
            return torch.randint(0, spec_vocab, (setup.micro_batch, setup.seq_len), device=device)

    return make


def trace(
    model: str,
    setup: Setup,
    steps: int = 2,
    *,
    fake: bool = True,
    progress: Progress | None = None,
    keep_timeline: bool = True,
) -> TraceResult:
    """Trace ``steps`` training steps with fake tensors on "cpu" (``fake=False``: run them
    for real on the CPU, for tiny models and the oracle)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    say = progress or (lambda _msg: None)
    name, config = load_config(model)
    if not fake:
        refuse_if_too_big(model, setup)
    t0 = time.perf_counter()
    fake_mode = FakeTensorMode(allow_non_fake_inputs=True) if fake else None
    say("building the model")
    with unpacked_batches(), cuda_dropout(), cuda_int8_path(), grouped_mm_any_dtype():
        built = build(config, setup, fake=fake, device="cpu", fake_mode=fake_mode)
        counter = Counter(keep_timeline=keep_timeline)
        for p in built.model.parameters():
            kind = "trainable_weights" if p.requires_grad else "weights"
            counter.track(p, kind)
            counter.mark(p, kind)
        for b in [*built.model.buffers(), *getattr(built.model, "_vramplan_quant_tensors", [])]:
            counter.track(b, "weights")
            counter.mark(b, "weights")
        make_ids = _ids_maker(load_model(model).vocab_size, setup, "cpu", fake_mode)  # text_config may omit it
        layout: Any = contextlib.nullcontext()
        # image batches for a family whose tower the plan models (a tower counted only, Llama 4's: text)
        if "vision_config" in config and load_model(model).vision is not None:
            base = built.model.get_base_model() if hasattr(built.model, "get_base_model") else built.model
            spec = load_model(model)
            assert spec.vision is not None
            batch: ImageBatch | FixedImageBatch | OneSequenceImageBatch
            if spec.vision.image_size:  # one resolution for every image (Gemma 3's SigLIP)
                batch = FixedImageBatch(spec, setup, base.config)
            elif spec.vision.one_sequence:  # the images of a micro-batch as one sequence (Pixtral)
                batch = OneSequenceImageBatch(spec, setup, base.config)
            else:
                batch = ImageBatch(spec, setup, base.config, base)
            layout = batch.fixed_layout(base)
            make_ids = lambda: batch.inputs(fake_mode)  # noqa: E731
        baseline = counter.total
        say(f"running {steps} step(s)")
        counter.on_phase = lambda phase, step: say(f"step {step + 1} of {steps}: {phase}")
        mode_ctx = fake_mode if fake_mode is not None else contextlib.nullcontext()
        with layout, mode_ctx, CountingMode(counter), counted_rng_state(counter):
            _run_with_bookkeeping(built, setup, steps, counter, make_ids)
    seconds = time.perf_counter() - t0
    result = _result(name, setup, "trace" if fake else "cpu", steps, counter, built, seconds)
    return result.model_copy(update={"baseline_bytes": baseline})


def _run_with_bookkeeping(
    built: Built, setup: Setup, steps: int, counter: Counter, make_ids: Callable[[], Any]
) -> None:
    """Run steps, remembering which storages became gradients and optimizer state."""
    original_step = built.optimizer.step

    def step_and_note(*args: Any, **kwargs: Any) -> Any:
        for p in built.model.parameters():
            if p.grad is not None:
                counter.mark(p.grad, "gradients")
        out = original_step(*args, **kwargs)
        for state in built.optimizer.state.values():
            for v in state.values():
                if isinstance(v, torch.Tensor):
                    counter.mark(v, "optimizer_state")
        return out

    built.optimizer.step = step_and_note
    try:
        run_steps(built, setup, steps, "cpu", counter, make_ids)
    finally:
        built.optimizer.step = original_step


def _result(
    name: str, setup: Setup, backend: str, steps: int, counter: Counter, built: Built, seconds: float
) -> TraceResult:
    replayed = replay(counter.events)
    by_kind = {k: 0 for k in KINDS}
    for item in counter.peak_snapshot.values():
        by_kind[_kind(item)] += item.nbytes
    largest = sorted(counter.peak_snapshot.items(), key=lambda kv: -kv[1].nbytes)[:10]
    return TraceResult(
        model=name,
        setup=setup,
        backend=backend,
        steps=steps,
        peak_bytes=counter.peak,
        simulated_reserved_bytes=replayed.peak_reserved,
        simulated_needed_bytes=replayed.peak_needed,
        peak_phase=counter.peak_at[1],
        peak_step=counter.peak_at[0],
        by_kind=by_kind,
        phases={k: v for k, v in counter.phase_peaks.items() if not k.endswith(("/setup", "/between"))},
        largest=[
            Allocation(
                nbytes=item.nbytes,
                kind=_kind(item),
                op=item.op or "(parameter)",
                shape=list(item.shape),
                dtype=item.dtype,
            )
            for _, item in largest
        ],
        timeline=_timeline(counter),
        seconds=seconds,
        versions=versions(),
        notes=built.notes,
    )


def cpu_profiler_peak(model: str, setup: Setup, steps: int = 2) -> int:
    """Run the steps for real on the CPU under ``torch.profiler`` (profile_memory) and return
    the allocator's peak above what existed before the first step: the oracle the counter
    must match."""
    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import Action, MemoryProfile

    name, config = load_config(model)
    with unpacked_batches(), cuda_dropout(), cuda_int8_path():
        built = build(config, setup, fake=False, device="cpu")
        make_ids = _ids_maker(int(config["vocab_size"]), setup, "cpu", None)
        with profile(
            activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True
        ) as prof:
            run_steps(built, setup, steps, "cpu", None, make_ids)
    live = peak = 0
    for _, action, _, size in MemoryProfile(prof.profiler.kineto_results).timeline:
        if action == Action.CREATE:
            live += size
        elif action == Action.DESTROY:
            live -= size
        peak = max(peak, live)
    return peak


def require_cuda() -> None:
    if not torch.cuda.is_available():
        raise VramplanError("backend", "no CUDA device here: 'vramplan measure' needs a GPU; use 'vramplan trace'")


def _nvml_process_bytes() -> int | None:
    """This process's device memory as NVML (nvidia-smi) reports it, if NVML is there."""
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
        for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
            if proc.pid == os.getpid():
                return int(proc.usedGpuMemory)
    except Exception:
        return None
    return None


def measure(model: str, setup: Setup, steps: int = 2, *, progress: Progress | None = None) -> TraceResult:
    """Run the steps on the CUDA card and read torch's peak counters and NVML; an
    out-of-memory is recorded as the outcome, not raised."""
    require_cuda()
    say = progress or (lambda _msg: None)
    name, config = load_config(model)
    t0 = time.perf_counter()
    say("building the model on the GPU")
    built = build(config, setup, fake=False, device="cuda")
    make_ids = _ids_maker(int(config["vocab_size"]), setup, "cuda", None)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    outcome, device_peak = "ok", None
    say(f"running {steps} step(s)")
    try:
        run_steps(built, setup, steps, "cuda", None, make_ids)
        torch.cuda.synchronize()
        device_peak = _nvml_process_bytes()
    except torch.cuda.OutOfMemoryError:
        outcome = "oom"
    allocated = torch.cuda.max_memory_allocated()
    return TraceResult(
        model=name,
        setup=setup,
        backend="cuda",
        steps=steps,
        outcome=outcome,
        peak_bytes=allocated,
        peak_phase="unknown",
        peak_step=steps - 1,
        by_kind={},
        phases={},
        largest=[],
        reserved_bytes=torch.cuda.max_memory_reserved(),
        device_bytes=device_peak,
        seconds=time.perf_counter() - t0,
        versions=versions(),
        not_included=[],
        notes=[*built.notes, f"GPU: {torch.cuda.get_device_name()}"],
    )
