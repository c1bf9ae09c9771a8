"""Per-GPU terms under multi-GPU layouts and the generation estimate."""

from __future__ import annotations

import pytest

from tests.conftest import error_line, requires
from vramplan.emit import emit
from vramplan.memory import estimate
from vramplan.memory.inference import inference_estimate, kv_cache_tensor_bytes
from vramplan.models import load_model
from vramplan.params import param_counts
from vramplan.setup import make_setup

SPEC = "qwen2.5-7b"


@pytest.fixture(scope="module")
def spec():
    return load_model(SPEC)


def _alloc(spec, **kw) -> int:
    return estimate(spec, make_setup(**kw)).allocated_bytes


def test_sharding_orders_the_layouts(spec) -> None:
    full = dict(method="full", precision="bf16", seq_len=1024)
    ddp = _alloc(spec, num_gpus=4, parallel="ddp", **full)
    z1 = _alloc(spec, num_gpus=4, parallel="zero1", **full)
    z2 = _alloc(spec, num_gpus=4, parallel="zero2", **full)
    z3 = _alloc(spec, num_gpus=4, parallel="zero3", **full)
    assert z3 < z2 <= z1 < ddp
    off = _alloc(spec, num_gpus=4, parallel="zero3", offload="optimizer", **full)
    off_all = _alloc(spec, num_gpus=4, parallel="zero3", offload="optimizer+params", **full)
    assert off_all < off < z3


def test_zero3_shards_weights_and_state(spec) -> None:
    est = estimate(spec, make_setup(method="full", num_gpus=8, parallel="zero3"))
    n = param_counts(spec).total
    assert est.terms.get("weights/trainable", 0) == -(-2 * n // 8)
    # DeepSpeed: fp32 master plus two fp32 Adam moments (12 B per trained parameter), partitioned
    assert est.terms["optimizer/adamw"] == -(-12 * n // 8)


@pytest.mark.parametrize("layout", ["zero3", "fsdp", "device_map"])
def test_more_gpus_never_cost_more_per_gpu(spec, layout) -> None:
    values = [_alloc(spec, method="full", num_gpus=n, parallel=layout) for n in (2, 4, 8, 16)]
    assert values == sorted(values, reverse=True)


def test_layout_flags_on_the_cli_plan(spec) -> None:
    from vramplan import plan

    p = plan(SPEC, gpu="a100-80g", method="full", num_gpus=8, parallel="zero3")
    assert p.setup.parallel == "zero3" and p.setup.num_gpus == 8 and p.fits


def test_kv_cache_is_the_formula(spec) -> None:
    setup = make_setup(method="full", seq_len=4096, micro_batch=2)
    assert kv_cache_tensor_bytes(spec, setup) == 2 * spec.num_layers * spec.num_kv_heads * spec.head_dim * 8192 * 2
    est = inference_estimate(spec, setup)
    assert est.terms["weights/frozen"] == 2 * param_counts(spec).total
    longer = inference_estimate(spec, make_setup(method="full", seq_len=8192, micro_batch=2))
    assert longer.allocated_bytes > est.allocated_bytes


def test_gptq_keeps_a_vision_tower_16bit() -> None:
    vl = load_model("qwen-vl-chat")
    g = inference_estimate(vl, make_setup(method="qlora", quant="gptq-int4", precision="fp16", seq_len=256))
    b = inference_estimate(vl, make_setup(method="qlora", quant="bnb-nf4", precision="fp16", seq_len=256))
    assert g.terms["weights/frozen"] > b.terms["weights/frozen"]


@pytest.mark.e2e
@requires("torch")
def test_trace_refuses_a_layout() -> None:
    """The refusal is our one line; what the trace stack's libraries print to stderr before it
    (bitsandbytes 0.50 prints a kernel-download warning) is theirs."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "vramplan", "trace", "qwen2.5-0.5b", "--gpus", "2", "--parallel", "ddp"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 2, out.stderr[-2000:]
    assert error_line(out.stderr).startswith("vramplan: error: parallel:")
    assert "Traceback" not in out.stderr


@pytest.mark.e2e
def test_plan_says_the_layout() -> None:
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "vramplan", "qwen2.5-7b", "--gpu", "a10", "--gpus", "4", "--parallel", "zero2"],
        capture_output=True,
        text=True,
        timeout=300,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    )
    assert out.returncode in (0, 1), out.stderr
    assert "4 GPUs, zero2 (memory per GPU)" in out.stdout


def test_inference_plans_kv_cache_dtypes_and_batch() -> None:
    from vramplan import plan
    from vramplan.errors import VramplanError

    p = plan("qwen2.5-7b", gpu="4090", method="inference", seq_len=32768, micro_batch=1)
    assert p.fits and p.trainable_params == 0
    kv16 = p.terms["inference/kv_cache"]
    q = plan("qwen2.5-7b", gpu="4090", method="inference", seq_len=32768, micro_batch=1, kv_cache="int8")
    assert q.terms["inference/kv_cache"] == pytest.approx(kv16 / 2, rel=1e-6)
    free = plan("qwen2.5-7b", gpu="h100", method="inference", seq_len=4096)
    assert free.setup.micro_batch == 8  # the largest batch that fits is chosen
    with pytest.raises(VramplanError, match="nothing to emit"):
        emit(p, "trl")
