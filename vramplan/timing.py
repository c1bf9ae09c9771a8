"""How long a step takes: matmul FLOPs over the card's dense throughput, plus the
memory-bound work (dequantization, the optimizer step) over its bandwidth.

Per token, with ``N`` the weights of the linear layers one token goes through (attention,
MLP or its routed experts, lm_head) and ``A = 2·s·q_dim`` the attention score and value
products per layer (half under causal flash/sdpa kernels, which skip the masked half):

- forward: ``2·N + 2·A·L``;
- backward: the activations' gradients, ``2·N + 4·A·L`` (for freeze, only down to the
  lowest trained layer), plus the weights' gradients ``2·N_trained`` (full, freeze; LoRA
  adapters are negligible);
- gradient checkpointing recomputes the layers' forward once more.

QLoRA adds a 16-bit read and write of every quantized weight per pass (dequantization);
the optimizer step reads and writes weights, gradients and state once. Throughput is the
catalog's dense bf16/fp16 TFLOPs times an efficiency fitted on published speeds
(tables/measured/speeds.csv; ``benchmarks/timing_errors.py``); bandwidth is the catalog's.
A card whose row lacks the figure the setup needs (its precision's dense TFLOPs, or the
bandwidth) gets no time: :func:`step_time` refuses it in one line, and only the ranking of
setups on that card (``relative=True``) runs at placeholder figures, printing no number.

Across GPUs (:func:`communication_seconds`), ring collectives move ``(n-1)/n`` of a buffer
through each GPU's link, one way at half the catalog's bidirectional figure: DDP all-reduces
the gradients once per step (twice the bytes), ZeRO-1/2 reduce-scatter them every
micro-batch and all-gather the updated 16-bit weights once per step, ZeRO-3 and FSDP also
all-gather the 16-bit weights for forward and again for backward every micro-batch. CPU
offload adds the gradients down and the weights up over the host link, the CPU Adam step
(memory-bound on the host), and for parameter offload every rank's weight partition up for
forward and backward. ``device_map`` runs the cards one after the other: one micro-batch at
a time for the whole machine. These are not fitted (no published multi-GPU speed states
its interconnect); they rank layouts, they do not promise seconds.
"""

from __future__ import annotations

import csv
import json
from functools import lru_cache

from pydantic import BaseModel, ConfigDict

from vramplan.errors import VramplanError
from vramplan.gpus import GPU, resolve_gpu
from vramplan.memory import estimate, optimizer, vision
from vramplan.memory.host import host_terms
from vramplan.memory.trainable import full_trainable_params, moe_layer_set, trainable_layers, trainable_params
from vramplan.memory.weights import quantized_weight_params
from vramplan.models import load_model
from vramplan.params import param_counts
from vramplan.published import published_csv, read_rows, row_setup
from vramplan.setup import Setup
from vramplan.spec import ModelSpec
from vramplan.tables import tables_dir


class StepTime(BaseModel):
    model_config = ConfigDict(frozen=True)
    flops_per_step: float
    seconds_per_step: float
    tokens_per_second: float
    compute_seconds: float
    memory_seconds: float
    communication_seconds: float = 0.0


#: host link for CPU offload, one way: PCIe 4.0 x16, 64 GB/s bidirectional as NVIDIA's
#: datasheets print it (the same figure tables/gpus.csv uses for PCIe 4.0 cards).
HOST_LINK_BYTES_PER_S = 32e9
#: between nodes, one way: a 200 Gb/s InfiniBand HDR port per GPU, as DGX/HGX A100 nodes
#: are cabled (an assumption for any multi-node plan; a slower network only ranks lower).
NODE_LINK_BYTES_PER_S = 25e9
#: CPU Adam touches about 32 B per parameter (fp32 weight, gradient and two moments read,
#: three written, plus the 16-bit copy); at an assumed 50 GB/s of host memory bandwidth.
CPU_ADAM_PARAMS_PER_S = 50e9 / 32


def communication_seconds(spec: ModelSpec, setup: Setup, gpu: GPU) -> float:
    """Seconds one optimizer step spends moving data between GPUs and to the host."""
    n = setup.world_size
    layout = setup.parallel
    if layout in ("none", "device_map") or n == 1:
        return 0.0
    link = (gpu.interconnect_gb_s or 64.0) * 1e9 / 2
    if setup.num_nodes > 1:
        link = min(link, NODE_LINK_BYTES_PER_S)
    ring = (n - 1) / n
    trainable = trainable_params(spec, setup)
    grads = 2 * trainable  # 16-bit gradients on the wire
    weights16 = 2 * param_counts(spec).total
    mbs = setup.grad_accum
    moved = 0.0
    if layout == "ddp":
        moved = 2 * grads * ring
    elif layout in ("zero1", "zero2"):
        moved = mbs * grads * ring + 2 * trainable * ring
    else:  # zero3, fsdp: gather the weights for forward and backward, scatter the gradients
        gathers = 1 if (layout == "fsdp" and setup.fsdp_sharding == "shard_grad_op") else 2
        moved = mbs * (gathers * weights16 + grads) * ring
    seconds = moved / link
    host = sum(host_terms(spec, setup).values())
    if host:
        share = trainable / setup.shard_count
        seconds += 2 * 2 * share / HOST_LINK_BYTES_PER_S  # gradients down, weights up
        seconds += trainable / setup.num_nodes / CPU_ADAM_PARAMS_PER_S
        if setup.offload == "optimizer+params":
            seconds += mbs * 2 * (weights16 / setup.shard_count) / HOST_LINK_BYTES_PER_S
    return seconds


def _layer_matmul_params(spec: ModelSpec, layer: int) -> int:
    return _kind_matmul_params(spec, layer in moe_layer_set(spec))


@lru_cache(maxsize=256)
def _kind_matmul_params(spec: ModelSpec, moe: bool) -> int:
    """Matmul weights one token goes through in a dense or an MoE layer."""
    total = 0
    for lin in spec.attention + (spec.moe_mlp if moe else spec.mlp):
        n = lin.in_features * lin.out_features
        if moe and spec.moe is not None and lin.count == spec.moe.num_experts:
            total += n * spec.moe.experts_per_token  # a token goes through k of the E experts
        else:
            total += n * lin.count
    return total


def flops_per_token(spec: ModelSpec, setup: Setup) -> float:
    """Training FLOPs for one token of a ``seq_len`` sequence (see the module docstring)."""
    per_layer = [_layer_matmul_params(spec, i) for i in range(spec.num_layers)]
    head = spec.vocab_size * spec.hidden_size
    attn = 2 * setup.seq_len * spec.num_heads * spec.head_dim
    if setup.attention != "eager":
        attn //= 2
    fwd_layers = [2 * n + 2 * attn for n in per_layer]
    forward = sum(fwd_layers) + 2 * head
    trained = list(trainable_layers(spec, setup))
    lowest = min(trained) if setup.method == "freeze" and trained else 0
    bwd_act = sum(2 * per_layer[i] + 4 * attn for i in range(lowest, spec.num_layers)) + 2 * head
    bwd_w = 0
    if setup.method == "full":
        bwd_w = 2 * sum(per_layer) + 2 * head
    elif setup.method == "freeze":
        bwd_w = 2 * sum(per_layer[i] for i in trained)
    recompute = sum(fwd_layers[lowest:]) if setup.grad_checkpointing else 0
    return float(forward + bwd_act + bwd_w + recompute)


def constants() -> dict[str, float]:
    """Fitted efficiency and per-micro-batch overhead (tables/timing.json)."""

    data = json.loads((tables_dir() / "timing.json").read_text())
    return {k: float(v["value"]) for k, v in data.items() if not k.startswith("_") and "value" in v}


#: placeholders for a card without published figures, used only to order setups on that card
#: (``step_time(..., relative=True)``): never printed as a speed or a time.
RELATIVE_TFLOPS = 10.0
RELATIVE_BANDWIDTH_GB_S = 500.0


def tensor_tflops(gpu: GPU, setup: Setup) -> float | None:
    """The card's dense tensor TFLOPs the setup's matmuls run at: bf16 or fp16 by its
    precision; fp32 runs TF32 at half the 16-bit rate (halved in :func:`step_time`)."""
    half = setup.precision.removeprefix("amp-")
    if half == "bf16":
        return gpu.bf16_tflops_dense
    if half == "fp16":
        return gpu.fp16_tflops_dense
    return gpu.bf16_tflops_dense or gpu.fp16_tflops_dense


def missing_figure(gpu: GPU, setup: Setup) -> str | None:
    """The tables/gpus.csv column the time model needs for ``setup`` and ``gpu`` lacks, or None."""
    if not tensor_tflops(gpu, setup):
        half = setup.precision.removeprefix("amp-")
        return "fp16_tflops_dense" if half == "fp16" else "bf16_tflops_dense"
    if not gpu.memory_bandwidth_gb_s:
        return "memory_bandwidth_gb_s"
    return None


def refusal(gpu: GPU, figure: str) -> str:
    """The one line that refuses to time ``gpu``: the card and the figure it lacks."""
    return (
        f"{gpu.name} ({gpu.key}) has no published {figure} in tables/gpus.csv, so the time model gives no"
        " tokens/s, wall time or cost on it; plan without --samples/--avg-tokens/--dataset-tokens/--price-per-hour"
    )


def dequant_weight_passes(spec: ModelSpec, setup: Setup) -> float:
    """Quantized weights dequantized in one step: every quantized weight, once per pass
    (forward, backward, and the recompute under checkpointing), per micro-batch."""
    if setup.method != "qlora":
        return 0.0
    passes = 3 if setup.grad_checkpointing else 2
    return float(passes * quantized_weight_params(spec, setup.quant) * setup.grad_accum)


def step_time(
    spec: ModelSpec,
    setup: Setup,
    gpu: GPU,
    efficiency: float | None = None,
    per_micro_batch: float | None = None,
    per_dequant: float | None = None,
    *,
    relative: bool = False,
) -> StepTime:
    """One optimizer step: ``grad_accum`` micro-batches of ``micro_batch x seq_len`` tokens.

    A card without the published figures the setup needs (:func:`missing_figure`) is refused
    (``VramplanError`` on ``gpu``); with ``relative`` it is timed at placeholder figures, which
    orders setups on that one card and states no time."""
    c = constants() if efficiency is None or per_micro_batch is None or per_dequant is None else {}
    efficiency = c["matmul_efficiency"] if efficiency is None else efficiency
    per_micro_batch = c["seconds_per_micro_batch"] if per_micro_batch is None else per_micro_batch
    per_dequant = c["seconds_per_dequantized_weight"] if per_dequant is None else per_dequant
    tokens = setup.micro_batch * setup.seq_len * setup.grad_accum
    # the language model also runs the images' (and video's) tokens; the vision tower is not timed
    media = setup.micro_batch * setup.grad_accum * vision.image_tokens(spec, setup) if setup.has_media else 0
    flops = flops_per_token(spec, setup) * (tokens + media)
    missing = missing_figure(gpu, setup)
    if missing and not relative:
        raise VramplanError("gpu", refusal(gpu, missing))
    peak = tensor_tflops(gpu, setup) or RELATIVE_TFLOPS
    if setup.precision == "fp32":
        peak /= 2  # TF32 at half the 16-bit rate
    compute = flops / (peak * 1e12 * efficiency)
    bandwidth = (gpu.memory_bandwidth_gb_s or RELATIVE_BANDWIDTH_GB_S) * 1e9
    moved = 0.0
    dequant = dequant_weight_passes(spec, setup) * per_dequant
    est = estimate(spec, setup)
    state = est.terms.get(f"optimizer/{setup.optimizer}", 0) + est.terms.get("optimizer/paged_state", 0)
    grads = optimizer.gradient_bytes(spec, setup)
    weights = (full_trainable_params(spec, setup) * 2) if not setup.is_lora else 0
    moved += 2 * (state + grads + weights)
    memory = moved / bandwidth
    memory += dequant
    comm = communication_seconds(spec, setup, gpu)
    seconds = compute + memory + per_micro_batch * setup.grad_accum + comm
    return StepTime(
        flops_per_step=flops,
        seconds_per_step=seconds,
        tokens_per_second=tokens / seconds,
        compute_seconds=compute,
        memory_seconds=memory,
        communication_seconds=comm,
    )


class SpeedRow(BaseModel):
    """A published speed with the configuration it belongs to (from published.csv)."""

    model_config = ConfigDict(frozen=True)
    id: str
    source: str
    seconds: float
    matmul_seconds_at_peak: float  # FLOPs / dense peak (efficiency 1)
    micro_batches: int
    memory_seconds: float
    dequant_weight_passes: float


def speed_rows() -> list[SpeedRow]:
    """tables/measured/speeds.csv joined with the configurations in published.csv."""

    configs = {r["id"]: r for r in read_rows(published_csv())}
    out = []
    with (tables_dir() / "measured" / "speeds.csv").open(newline="") as fh:
        for r in csv.DictReader(fh):
            row = configs[r["id"]]
            spec, setup = load_model(row["model"]), row_setup(row)
            t1 = step_time(spec, setup, resolve_gpu(row["gpu"]), efficiency=1.0, per_micro_batch=0.0, per_dequant=0.0)
            out.append(
                SpeedRow(
                    id=r["id"],
                    source=r["source"],
                    seconds=float(r["seconds_per_iteration"]),
                    matmul_seconds_at_peak=t1.compute_seconds,
                    micro_batches=setup.grad_accum,
                    memory_seconds=t1.memory_seconds,
                    dequant_weight_passes=dequant_weight_passes(spec, setup),
                )
            )
    return out


def fit(rows: list[SpeedRow]) -> tuple[dict[str, float], dict[str, float]]:
    """Fitted constants and each row's residual (% of measured): least squares, in relative
    terms (each row divided by its measured time), of ``seconds - memory =
    matmul_at_peak / efficiency + micro_batches x overhead + dequantized weights x cost``."""
    import numpy as np

    a = np.array([[r.matmul_seconds_at_peak, r.micro_batches, r.dequant_weight_passes] for r in rows], dtype=float)
    y = np.array([r.seconds - r.memory_seconds for r in rows], dtype=float)
    w = 1.0 / np.array([r.seconds for r in rows])
    cols = [j for j in range(3) if a[:, j].any()]
    coef = np.zeros(3)
    coef[cols] = np.linalg.lstsq(a[:, cols] * w[:, None], y * w, rcond=None)[0]
    coef = np.maximum(coef, [1e-9, 0.0, 0.0])
    pred = a @ coef + np.array([r.memory_seconds for r in rows])
    resid = {r.id: float(100.0 * (p - r.seconds) / r.seconds) for r, p in zip(rows, pred, strict=True)}
    consts = {
        "matmul_efficiency": float(1.0 / coef[0]),
        "seconds_per_micro_batch": float(coef[1]),
        "seconds_per_dequantized_weight": float(coef[2]),
    }
    return consts, resid


class WallTime(BaseModel):
    model_config = ConfigDict(frozen=True)
    tokens: int
    tokens_per_second: float
    seconds_per_step: float
    steps: int
    seconds: float


def data_parallel_replicas(setup: Setup) -> int:
    """Micro-batches the run computes at once: one per GPU, except ``device_map`` (one
    process walks the cards in turn)."""
    return 1 if setup.parallel in ("none", "device_map") else setup.world_size


def wall_time(
    spec: ModelSpec, setup: Setup, gpu: GPU, *, samples: int, avg_tokens: int, epochs: float = 1.0
) -> WallTime:
    """Time for ``epochs`` passes over ``samples`` samples of ``avg_tokens`` tokens, each
    micro-batch running at that average length (batches padded to their longest sample
    take longer: the figure is a floor for unsorted data)."""
    run = setup.model_copy(update={"seq_len": max(1, min(avg_tokens, setup.seq_len))})
    t = step_time(spec, run, gpu)
    replicas = data_parallel_replicas(setup)
    per_step = setup.micro_batch * setup.grad_accum * replicas
    steps = max(1, -(-int(samples * epochs) // per_step))
    return WallTime(
        tokens=int(samples * avg_tokens * epochs),
        tokens_per_second=t.tokens_per_second * replicas,
        seconds_per_step=t.seconds_per_step,
        steps=steps,
        seconds=steps * t.seconds_per_step,
    )
