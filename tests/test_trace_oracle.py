"""Oracle: the fake-tensor trace equals a real CPU run, and both equal the CPU allocator's
peak from torch.profiler (profile_memory) within 0.5%.

Tiny Qwen2-shaped configs run for real on the CPU with the real transformers, PEFT,
bitsandbytes and optimizers; any drift in those libraries that changes the code path
under fake tensors shows up here.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import requires
from vramplan.setup import make_setup

pytestmark = [pytest.mark.trace, requires("torch", "transformers", "peft")]


def trace(*args: Any, **kwargs: Any) -> Any:
    """``vramplan.trace.run.trace``, imported when a test runs (it imports torch)."""
    from vramplan.trace.run import trace as run

    return run(*args, **kwargs)


def cpu_profiler_peak(*args: Any, **kwargs: Any) -> int:
    from vramplan.trace.run import cpu_profiler_peak as peak

    return peak(*args, **kwargs)


CASES = {
    "full-amp-sdpa-gc-foreach": dict(method="full", precision="amp-bf16", grad_checkpointing=True),
    "full-bf16-sdpa-foreach": dict(method="full", precision="bf16", grad_checkpointing=False),
    "full-bf16-eager-fused": dict(
        method="full", precision="bf16", attention="eager", grad_checkpointing=False, optimizer="adamw-fused"
    ),
    "lora-sdpa-gc-dropout": dict(method="lora", grad_checkpointing=True, lora_dropout=0.05),
    "lora-eager-fused-nodropout": dict(
        method="lora", attention="eager", grad_checkpointing=False, lora_dropout=0.0, optimizer="adamw-fused"
    ),
    "lora-fp32-lm_head": dict(method="lora", precision="fp32", trainable_extra=("lm_head",), grad_checkpointing=False),
    "qlora-nf4-gc": dict(method="qlora", quant="bnb-nf4", grad_checkpointing=True),
    "qlora-nf4-dq-eager": dict(method="qlora", quant="bnb-nf4-dq", attention="eager", grad_checkpointing=False),
    "qlora-int8-gc": dict(method="qlora", quant="bnb-int8", grad_checkpointing=True),
    "freeze-top-layer-sgd": dict(method="freeze", freeze_trainable_layers=1, grad_checkpointing=False, optimizer="sgd"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_trace_equals_real_cpu_run(tiny_config_file: str, case: str) -> None:
    if CASES[case].get("method") == "qlora":
        pytest.importorskip("bitsandbytes")
    import torch

    setup = make_setup(seq_len=32, micro_batch=2, **CASES[case])
    fake = trace(tiny_config_file, setup, steps=2, keep_timeline=False)
    torch.manual_seed(0)  # the real run and the profiled run see the same weights and tokens
    real = trace(tiny_config_file, setup, steps=2, keep_timeline=False, fake=False)
    torch.manual_seed(0)
    allocator = cpu_profiler_peak(tiny_config_file, setup, steps=2)
    traced = fake.peak_bytes - fake.baseline_bytes
    assert traced == real.peak_bytes - real.baseline_bytes  # fake tensors take the real code path
    assert fake.baseline_bytes == real.baseline_bytes
    assert abs(traced - allocator) <= 0.005 * allocator, (traced, allocator)


def test_second_step_holds_optimizer_state(tiny_config_file: str) -> None:
    """The first step has no optimizer state during forward/backward: steady state is step 1."""
    setup = make_setup(seq_len=32, micro_batch=2, method="full", precision="bf16", grad_checkpointing=False)
    result = trace(tiny_config_file, setup, steps=2, keep_timeline=False)
    assert result.phases["step1/forward"] > result.phases["step0/forward"]
    assert result.by_kind["optimizer_state"] > 0


def test_tied_embeddings_stay_tied() -> None:
    """to_empty() under fake mode un-ties tied weights; the harness re-ties them."""
    from vramplan.models import load_model
    from vramplan.params import param_counts

    setup = make_setup(method="full", precision="bf16", seq_len=16, grad_checkpointing=False)
    result = trace("qwen2.5-0.5b", setup, steps=1, keep_timeline=False)
    weights = param_counts(load_model("qwen2.5-0.5b")).total * 2
    assert result.baseline_bytes - weights < 2**20  # only buffers (rotary inv_freq) beside the weights
