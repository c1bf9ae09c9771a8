"""The search: the setups to weigh for the pinned fields, most preferred first, and how they
are weighed (each estimated against the card, group by group, up to its first fit).

Preference when a field is not pinned: the highest-fidelity method that fits
(full AMP > full pure 16-bit > LoRA > QLoRA); within it, the fastest fitting micro-batch,
checkpointing and (with several GPUs) layout by the time model (timing.py).
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

from vramplan import verdict
from vramplan.errors import VramplanError
from vramplan.gpus import GPU
from vramplan.memory import estimate, rl, vision
from vramplan.memory.host import host_terms
from vramplan.memory.policy import with_policy
from vramplan.policy import PolicyOf, default_policy
from vramplan.results import Estimate
from vramplan.setup import Setup, make_setup
from vramplan.setup import label as setup_label
from vramplan.spec import ModelSpec
from vramplan.timing import data_parallel_replicas, step_time

MICRO_BATCHES = (8, 4, 2, 1)

#: the search weighs setups against the card less the margin measured runs ask for (verdict.py:
#: a setup fits only when it fits safely); the planner clears it to find a *tight* setup when
#: nothing fits safely.
SAFE: ContextVar[bool] = ContextVar("vramplan_safe", default=True)


def _precisions(method: str, gpu: GPU) -> list[str]:
    half = "bf16" if gpu.bf16_supported else "fp16"
    return [f"amp-{half}", half] if method == "full" else [half]


#: multi-GPU layouts weighed when --parallel is not pinned, fastest first (timing.py's
#: communication model ranks the ones that fit).
LAYOUTS = (
    ("ddp", "none"),
    ("zero2", "none"),
    ("zero3", "none"),
    ("fsdp", "none"),
    ("zero3", "optimizer"),
    ("device_map", "none"),
    ("zero3", "optimizer+params"),
)


def layouts(pinned: dict[str, Any]) -> list[dict[str, Any]]:
    """The layouts to weigh: the pinned one, or every one that can run this many GPUs."""
    world = pinned.get("num_gpus", 1) * pinned.get("num_nodes", 1)
    if "parallel" in pinned or world == 1:
        return [{}]
    out = []
    for par, off in LAYOUTS:
        if pinned.get("method") == "inference" and par != "device_map":
            continue
        if pinned.get("num_nodes", 1) > 1 and par == "device_map":
            continue
        if pinned.get("method") == "qlora" and par in ("zero3", "fsdp"):
            continue  # sharding 4-bit weights (bnb_4bit_quant_storage) is neither searched nor emitted
        if "offload" in pinned and pinned["offload"] != off:
            continue
        out.append({"parallel": par, "offload": off})
    if not out:
        if pinned.get("method") == "inference":
            why = "generation splits its layers in one process (device_map): one node, no --offload"
        else:
            why = "drop --offload or pin --parallel"
        raise VramplanError("parallel", f"no multi-GPU layout runs this setup: {why}")
    return out


def batches(pinned: dict[str, Any]) -> list[dict[str, int]]:
    """Micro-batches to weigh (largest first). Under GRPO each step must generate whole
    groups of ``num_generations`` (TRL checks micro-batch x accumulation): with the
    accumulation free, it is raised to keep one group per step as the micro-batch shrinks."""
    if pinned.get("rl", "none") == "none":
        return [{"micro_batch": mb} for mb in ([pinned["micro_batch"]] if "micro_batch" in pinned else MICRO_BATCHES)]
    g = pinned.get("num_generations", Setup.model_fields["num_generations"].default)
    mbs = [pinned["micro_batch"]] if "micro_batch" in pinned else sorted({*MICRO_BATCHES, g}, reverse=True)
    out = []
    for mb in mbs:
        if "grad_accum" in pinned:
            if (mb * pinned["grad_accum"]) % g == 0:
                out.append({"micro_batch": mb})
        elif g % mb == 0 or mb % g == 0:
            out.append({"micro_batch": mb, "grad_accum": max(1, g // mb)})
    return out or [{"micro_batch": mbs[0]}]


def candidates(pinned: dict[str, Any], gpu: GPU) -> list[dict[str, Any]]:
    """Every setup to weigh, most preferred first: method, precision, layout, then the
    largest micro-batch, then checkpointing only if needed."""
    quant = pinned.get("quant")
    if "method" in pinned:
        methods = [pinned["method"]]
    elif quant not in (None, "none"):
        methods = ["qlora"]
    elif any(k.startswith("lora_") or k == "trainable_extra" for k in pinned):
        methods = ["lora"] + ([] if quant == "none" else ["qlora"])
    else:
        methods = ["full", "lora"] + ([] if quant == "none" else ["qlora"])
    out: list[dict[str, Any]] = []
    for method in methods:
        precisions = [pinned["precision"]] if "precision" in pinned else _precisions(method, gpu)
        for precision in precisions:
            for layout in layouts({**pinned, "method": method}):
                for batch in batches(pinned):
                    gcs = [pinned["grad_checkpointing"]] if "grad_checkpointing" in pinned else [False, True]
                    if method == "inference":
                        gcs = [False]
                    for gc in gcs:
                        fields = {
                            **pinned,
                            **layout,
                            **batch,
                            "method": method,
                            "precision": precision,
                            "grad_checkpointing": gc,
                        }
                        if method == "qlora" and quant is None:
                            fields["quant"] = "bnb-nf4"
                        out.append(fields)
    return out


def evaluate(
    spec: ModelSpec, gpu: GPU, fields: dict[str, Any], host: int | None = None, policy: PolicyOf = default_policy
) -> tuple[Setup, Estimate, bool]:
    """The setup, its estimate as the trainer whose ``policy`` it is runs it, and whether it
    fits the card (safely, with the verdict's margin, unless :data:`SAFE` is cleared; and the
    host RAM, when given)."""
    setup = make_setup(**fields)
    run = with_policy(setup, policy(setup))
    est = estimate(spec, run, card_bytes=gpu.memory_bytes, nvlink=gpu.nvlink)
    budget = verdict.safe_capacity(gpu.memory_bytes) if SAFE.get() else gpu.memory_bytes
    fits = verdict.needed(est) <= budget
    if fits and host is not None and setup.offload != "none":
        fits = sum(host_terms(spec, run).values()) <= host
    if fits and setup.vllm != "none":
        fits = rl.vllm_concurrent_sequences(spec, run, gpu.memory_bytes, vision.image_tokens(spec, setup)) >= 1
    return setup, est, fits


def label(s: Setup) -> str:
    """The short name of a setup (setup.label)."""
    return setup_label(s)


def groups(fields_list: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Candidates by method, precision, quantization and layout, in their order."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for fields in fields_list:
        key = (
            fields["method"],
            fields["precision"],
            fields.get("quant"),
            fields.get("parallel"),
            fields.get("offload"),
        )
        groups.setdefault(key, []).append(fields)
    return list(groups.values())


def weigh(
    spec: ModelSpec,
    gpu: GPU,
    fields_list: list[dict[str, Any]],
    host: int | None = None,
    policy: PolicyOf = default_policy,
) -> list[tuple[Setup, Estimate, bool]]:
    """Weigh candidates group by group (one method and precision), most preferred first.

    Memory never falls as the micro-batch grows and checkpointing only lowers it, so a
    group's last candidate (micro-batch 1, checkpointing) is its smallest: when even that does
    not fit, nothing else in the group is weighed; otherwise the group is weighed in order up
    to its first fit, its best."""
    out: list[tuple[Setup, Estimate, bool]] = []
    for group in groups(fields_list):
        smallest = evaluate(spec, gpu, group[-1], host, policy)
        if not smallest[2]:
            out.append(smallest)
            continue
        for fields in group[:-1]:
            item = evaluate(spec, gpu, fields, host, policy)
            out.append(item)
            if item[2]:
                break
        else:
            out.append(smallest)
    return out


def first_fit(
    spec: ModelSpec, gpu: GPU, pinned: dict[str, Any], host: int | None = None, policy: PolicyOf = default_policy
) -> tuple[Setup, Estimate] | None:
    """The first candidate that fits, in the search's order (None when none does or the
    fields are refused). Memory never falls as the micro-batch grows, so a group (one method,
    precision and layout) is weighed only when a candidate of its smallest micro-batch fits."""
    try:
        listed = candidates(pinned, gpu)
    except VramplanError:  # a released pin that no layout runs: no suggestion, not an error
        return None
    for group in groups(listed):
        smallest = min(f["micro_batch"] for f in group)
        weighed: dict[int, tuple[Setup, Estimate, bool]] = {}
        try:
            for i, fields in enumerate(group):
                if fields["micro_batch"] == smallest:
                    weighed[i] = evaluate(spec, gpu, fields, host, policy)
            if not any(e[2] for e in weighed.values()):
                continue
            for i, fields in enumerate(group):
                setup, est, fits = weighed[i] if i in weighed else evaluate(spec, gpu, fields, host, policy)
                if fits:
                    return setup, est
        except VramplanError:
            return None
    return None


def throughput(spec: ModelSpec, gpu: GPU, setup: Setup) -> float:
    """Tokens per second of the whole run (timing.py), to rank layouts that fit. On a card
    without published figures this is the relative model's: it orders setups, it is no speed."""
    return step_time(spec, setup, gpu, relative=True).tokens_per_second * data_parallel_replicas(setup)


def rank_class(
    spec: ModelSpec,
    gpu: GPU,
    pinned: dict[str, Any],
    first: Setup,
    host: int | None,
    policy: PolicyOf = default_policy,
) -> list[tuple[Setup, Estimate, bool]]:
    """Every fitting setup of the preferred method, precision and quantization (each
    micro-batch, checkpointing and layout the search weighs), fastest first by the time
    model: the fastest that fits is the one chosen."""
    same = [
        f
        for f in candidates(pinned, gpu)
        if (f["method"], f["precision"], f.get("quant", "none")) == (first.method, first.precision, first.quant)
    ]
    fitting = [e for e in (evaluate(spec, gpu, f, host, policy) for f in same) if e[2]]
    return sorted(fitting, key=lambda e: (-throughput(spec, gpu, e[0]), -e[0].micro_batch))
