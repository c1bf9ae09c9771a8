"""plan(): pick the setup that fits a card, with the breakdown and the alternatives.

Preference when a field is not pinned: the highest-fidelity method that fits
(full AMP > full pure 16-bit > LoRA > QLoRA); within it, the fastest fitting micro-batch,
checkpointing and (with several GPUs) layout by the time model (timing.py).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any, cast

from vramplan.errors import VramplanError, shown
from vramplan.gpus import GPU, resolve_gpu
from vramplan.limits import MAX_HOST_RAM_GIB, said
from vramplan.memory import estimate
from vramplan.memory.host import host_terms
from vramplan.models import load_model
from vramplan.params import param_counts
from vramplan.results import Alternative, Estimate, Note, NoteValue, Peak, Plan, Verdict
from vramplan.setup import Setup, check_fields, make_setup
from vramplan.spec import ModelSpec
from vramplan.units import GIB

MICRO_BATCHES = (8, 4, 2, 1)
SEQ_LEN_FLOOR = 256


def _gib(n: int) -> str:
    return f"{n / GIB:.2f} GiB"


def _precisions(method: str, gpu: GPU) -> list[str]:
    half = "bf16" if gpu.bf16_supported else "fp16"
    return [f"amp-{half}", half] if method == "full" else [half]


def _check_against_gpu(setup_fields: dict[str, Any], gpu: GPU) -> None:
    precision = setup_fields.get("precision")
    if precision in ("bf16", "amp-bf16") and not gpu.bf16_supported:
        raise VramplanError("precision", f"{gpu.name} has no bf16: use fp16 or amp-fp16")
    if setup_fields.get("attention") == "flash-attn-2" and not gpu.flash_attn2_supported:
        raise VramplanError("attention", f"{gpu.name} does not run FlashAttention-2: use sdpa or eager")


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


def _batches(pinned: dict[str, Any]) -> list[dict[str, int]]:
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
                for batch in _batches(pinned):
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


def _evaluate(
    spec: ModelSpec, gpu: GPU, fields: dict[str, Any], host: int | None = None
) -> tuple[Setup, Estimate, bool]:
    """The setup, its estimate, and whether it fits the card (and the host RAM, when given)."""
    setup = make_setup(**fields)
    est = estimate(spec, setup)
    fits = est.device_bytes <= gpu.memory_bytes
    if fits and host is not None and setup.offload != "none":
        fits = sum(host_terms(spec, setup).values()) <= host
    if fits and setup.vllm != "none":
        from vramplan.memory import rl, vision

        fits = rl.vllm_concurrent_sequences(spec, setup, vision.image_tokens(spec, setup)) >= 1
    return setup, est, fits


def _label(s: Setup) -> str:
    if s.method == "inference":
        return f"inference{' ' + s.quant if s.quant != 'none' else ''} {s.precision} batch {s.micro_batch}"
    method = s.method if s.method != "qlora" else f"qlora {s.quant}"
    gc = "GC" if s.grad_checkpointing else "no GC"
    layout = ""
    if s.parallel != "none":
        layout = f" {s.parallel}" + (f"+offload {s.offload}" if s.offload != "none" else "")
    return f"{method} {s.precision}{layout} mb{s.micro_batch} {gc}"


def _first_fit(
    spec: ModelSpec, gpu: GPU, pinned: dict[str, Any], host: int | None = None
) -> tuple[Setup, Estimate] | None:
    """The first candidate that fits, in the search's order (None when none does or the
    fields are refused). Memory never falls as the micro-batch grows, so a group (one method,
    precision and layout) is weighed only when a candidate of its smallest micro-batch fits."""
    try:
        listed = candidates(pinned, gpu)
    except VramplanError:  # a released pin that no layout runs: no suggestion, not an error
        return None
    for group in _groups(listed):
        smallest = min(f["micro_batch"] for f in group)
        weighed: dict[int, tuple[Setup, Estimate, bool]] = {}
        try:
            for i, fields in enumerate(group):
                if fields["micro_batch"] == smallest:
                    weighed[i] = _evaluate(spec, gpu, fields, host)
            if not any(e[2] for e in weighed.values()):
                continue
            for i, fields in enumerate(group):
                setup, est, fits = weighed[i] if i in weighed else _evaluate(spec, gpu, fields, host)
                if fits:
                    return setup, est
        except VramplanError:
            return None
    return None


def _value(v: Any) -> NoteValue:
    """A pinned value as note data: a tuple as a list, anything else that is not a number,
    a name or a flag as its text."""
    if isinstance(v, (list, tuple)):
        return [x if isinstance(x, (bool, int, float, str)) or x is None else str(x) for x in v]
    return v if isinstance(v, (bool, int, float, str)) or v is None else str(v)


def _suggestions(spec: ModelSpec, gpu: GPU, pinned: dict[str, Any], host: int | None = None) -> list[Note]:
    """The cheapest changes that make it fit: release one pinned choice and search again,
    switch to an 8-bit optimizer, or shorten the sequence (``fit.suggestion`` notes)."""
    tries: list[tuple[str, dict[str, NoteValue], dict[str, Any]]] = []
    for key in pinned:
        if key in ("seq_len",):
            continue
        released = {k: v for k, v in pinned.items() if k != key}
        if key == "method":  # other methods keep the vision tower and projector frozen anyway
            released = {k: v for k, v in released.items() if k not in ("freeze_vision", "freeze_projector")}
        change = {"change": "release", "field": key, "value": _value(pinned[key])}
        tries.append((f"without pinning {key}={pinned[key]}", change, released))
    if "optimizer" not in pinned:
        change = {"change": "set", "field": "optimizer", "value": "adamw-8bit"}
        tries.append(("--optimizer adamw-8bit", change, {**pinned, "optimizer": "adamw-8bit"}))
    seq = pinned.get("seq_len", Setup.model_fields["seq_len"].default) // 2
    while seq >= SEQ_LEN_FLOOR:
        tries.append(
            (f"--seq-len {seq}", {"change": "set", "field": "seq_len", "value": seq}, {**pinned, "seq_len": seq})
        )
        seq //= 2
    out = []
    for label, change, fields in tries:
        found = _first_fit(spec, gpu, family_defaults(spec, fields)[0], host)
        if found:
            setup, est = found
            text = f"would fit {label}: {_label(setup)}, {_gib(est.device_bytes)} on the device"
            data = {**change, "setup": _label(setup), "device_bytes": est.device_bytes}
            out.append(Note(code="fit.suggestion", data=data, text=text))
            if change["field"] == "seq_len":
                break  # the longest sequence that fits is the cheapest cut
    return out


def family_defaults(spec: ModelSpec, pinned: dict[str, Any]) -> tuple[dict[str, Any], list[Note]]:
    """``pinned`` with the choices the model's family makes when the user did not, and a note
    for each: the attention transformers builds it with (Gemma-2: eager), LoRA on an MoE's
    attention, dropout 0 under MoE all-linear. The planner and the trace both start here, so a
    trace builds the Setup the plan describes. An attention the family refuses is refused."""
    pinned = dict(pinned)
    notes: list[Note] = []
    attention = pinned.get("attention")
    if attention is not None and attention not in spec.attentions:
        raise VramplanError(
            "attention",
            f"transformers does not build {spec.model_type} with {attention}: use --attention"
            f" {' or '.join(spec.attentions)}",
        )
    if attention is None and Setup.model_fields["attention"].default not in spec.attentions:
        pinned["attention"] = spec.attentions[0]
        refused = Setup.model_fields["attention"].default
        also = [a for a in spec.attentions if a != pinned["attention"]]
        others = " or ".join(also)
        text = (
            f"{spec.model_type}: attention {pinned['attention']}, as transformers builds this family (it refuses"
            f" {refused})" + (f"; --attention {others} also runs it" if others else "")
        )
        data: dict[str, NoteValue] = {
            "model_type": spec.model_type,
            "attention": pinned["attention"],
            "refused": refused,
            "others": also,
        }
        notes.append(Note(code="family.attention", data=data, text=text))
    if spec.moe is not None and "lora_targets" not in pinned and pinned.get("method") in (None, "lora", "qlora"):
        targets = [lin.name for lin in spec.attention if lin.nn_linear]
        pinned["lora_targets"] = ",".join(targets)
        text = (
            f"MoE: LoRA on the attention ({pinned['lora_targets']}); --lora-targets all-linear also adapts the"
            " router and every expert (PEFT's ParamWrapper: far more trainable parameters and a folded copy of"
            " each layer's expert weights)"
        )
        notes.append(Note(code="moe.lora_targets", data={"targets": list(targets)}, text=text))
    moe_all_linear = str(pinned.get("lora_targets", "")).strip().lower() == "all-linear"
    if spec.moe is not None and moe_all_linear and "lora_dropout" not in pinned:
        pinned["lora_dropout"] = 0.0
        text = "MoE all-linear: lora_dropout 0, as PEFT's ParamWrapper on the experts requires"
        notes.append(Note(code="moe.lora_dropout", data={"lora_dropout": 0.0}, text=text))
    return pinned, notes


#: GPU counts ``num_gpus="auto"`` tries: one node of up to 8, then nodes of 8.
AUTO_GPUS = [(n, 1) for n in range(1, 9)] + [(8, m) for m in (2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)]


def plan(model: str, gpu: str = "4090", *, host_ram_gib: float | None = None, **pinned: Any) -> Plan:
    """Plan fine-tuning ``model`` on ``gpu``. Any Setup field can be pinned by keyword; the
    rest are searched. With more than one GPU and no ``parallel``, the layouts are weighed
    too and the fastest that fits is chosen; ``num_gpus="auto"`` finds the fewest cards that
    fit. ``host_ram_gib``: the RAM of each node, checked against what CPU offload puts there.
    Bad input raises :class:`vramplan.errors.VramplanError`."""
    if isinstance(model, os.PathLike):
        model = os.fspath(model)
    auto = pinned.get("num_gpus") == "auto"
    pinned = check_fields({k: v for k, v in pinned.items() if v is not None and not (auto and k == "num_gpus")})
    if auto:
        return _auto_gpus(model, gpu, host_ram_gib, pinned)
    if pinned.get("rl", "none") == "none":
        grpo_only = ("num_generations", "completion_len", "beta", "vllm")
        loose = sorted(k for k in grpo_only if k in pinned and pinned[k] != Setup.model_fields[k].default)
        if loose:
            raise VramplanError(loose[0], f"--{loose[0].replace('_', '-')} applies to --rl grpo only")
    host: int | None = None
    if host_ram_gib is not None:
        if (
            isinstance(host_ram_gib, bool)
            or not isinstance(host_ram_gib, (int, float))
            or not 0 < host_ram_gib <= MAX_HOST_RAM_GIB
        ):
            raise VramplanError(
                "host_ram",
                f"give the host RAM in GiB, above 0 and at most {said(MAX_HOST_RAM_GIB)}; got {shown(host_ram_gib)}",
            )
        host = int(host_ram_gib * GIB)
    spec = load_model(model)
    card = resolve_gpu(gpu)
    if (pinned.get("freeze_vision") or pinned.get("freeze_projector")) and spec.vision is None:
        raise VramplanError(
            "freeze_vision", f"{spec.name} has no vision tower: --freeze-vision/--freeze-projector apply to VLMs"
        )
    if pinned.get("vllm", "none") != "none":
        pinned["vllm_card_bytes"] = card.memory_bytes  # vLLM's share is a fraction of this card
    frozen_parts = bool(pinned.get("freeze_vision") or pinned.get("freeze_projector"))
    if frozen_parts and "method" not in pinned:
        pinned["method"] = "full"  # only full fine-tuning trains the tower or projector to begin with
    check = {k: v for k, v in pinned.items() if k not in ("method", "quant", "kv_cache")}
    if frozen_parts:
        check["method"] = pinned["method"]
    if check.get("rl", "none") != "none" and ("micro_batch" not in check or "grad_accum" not in check):
        check.update(_batches(pinned)[0])
    if "parallel" not in check and check.get("num_gpus", 1) * check.get("num_nodes", 1) > 1:
        check["parallel"] = "zero3" if check.get("offload", "none") != "none" else "ddp"
    make_setup(**check)
    _check_against_gpu(pinned, card)
    pinned, notes = family_defaults(spec, pinned)
    notes += gpu_notes(card, pinned)

    evaluated = _search(spec, card, candidates(pinned, card), host)
    fitting = [e for e in evaluated if e[2]]
    chosen = fitting[0] if fitting else min(evaluated, key=lambda e: (e[1].device_bytes, e[0].micro_batch))
    if fitting and chosen[0].method != "inference" and chosen[0].rl == "none":
        ranked = _rank_class(spec, card, pinned, chosen[0], host)
        chosen = ranked[0]
        evaluated = [e for e in evaluated if e[0] not in {r[0] for r in ranked}] + ranked
        if len(ranked) > 1:
            notes.append(_ranking_note(spec, card, ranked))
    setup, est, fits = chosen
    if setup.parallel == "zero3" and setup.world_size == 1 and setup.offload == "none":
        text = (
            "ZeRO-3 on one GPU shards nothing: it only adds DeepSpeed's fp32 master and buffers; use --offload"
            " optimizer or optimizer+params to move state to the host, or plan without --parallel"
        )
        notes.append(Note(code="parallel.zero3_one_gpu", data={"parallel": "zero3", "world_size": 1}, text=text))
    host_need = host_terms(spec, setup)
    if host_need:
        need = sum(host_need.values())
        notes.append(_host_note(need, host))
        if host is not None and need > host:
            fits = False
            notes.append(host_short_note(need, host))
    # --gpus auto weighing a count that does not fit drops the plan: nothing to compare
    alternatives = [] if _PROBING.get() and not fits else _alternatives(evaluated, chosen, card, spec)
    if setup.has_media:
        notes.append(_image_note(spec, setup, est))
    if setup.rl != "none":
        notes.append(_rl_note(setup, est))
    if setup.vllm != "none":
        notes.append(_vllm_note(spec, setup))
    if not fits:
        notes.append(short_by_note(card, est))
        if not _PROBING.get():  # --gpus auto weighing a count: no suggestions needed
            notes += _suggestions(spec, card, pinned, host)
    return Plan(
        model=spec.name,
        gpu=card,
        setup=setup,
        fits=fits,
        headroom_bytes=card.memory_bytes - est.device_bytes,
        peak=Peak(
            phase=est.phase,
            allocated_bytes=est.allocated_bytes,
            reserved_bytes=est.reserved_bytes,
            device_bytes=est.device_bytes,
        ),
        terms=est.terms,
        phases=est.phases,
        params=param_counts(spec),
        total_params=est.total_params,
        trainable_params=est.trainable_params,
        alternatives=alternatives,
        notes=notes,
        source=model,
        cards=est.cards,
        host_terms=host_need,
        host_ram_bytes=host,
    )


def _throughput(spec: ModelSpec, gpu: GPU, setup: Setup) -> float:
    """Tokens per second of the whole run (timing.py), to rank layouts that fit."""
    from vramplan.timing import data_parallel_replicas, step_time

    return step_time(spec, setup, gpu).tokens_per_second * data_parallel_replicas(setup)


#: fitting setups the plan lists beside the chosen one, fastest first.
RANKED_SHOWN = 5


def _rank_class(
    spec: ModelSpec, gpu: GPU, pinned: dict[str, Any], first: Setup, host: int | None
) -> list[tuple[Setup, Estimate, bool]]:
    """Every fitting setup of the preferred method, precision and quantization (each
    micro-batch, checkpointing and layout the search weighs), fastest first by the time
    model: the fastest that fits is the one chosen."""
    same = [
        f
        for f in candidates(pinned, gpu)
        if (f["method"], f["precision"], f.get("quant", "none")) == (first.method, first.precision, first.quant)
    ]
    fitting = [e for e in (_evaluate(spec, gpu, f, host) for f in same) if e[2]]
    return sorted(fitting, key=lambda e: (-_throughput(spec, gpu, e[0]), -e[0].micro_batch))


def _ranking_note(spec: ModelSpec, gpu: GPU, ranked: list[tuple[Setup, Estimate, bool]]) -> Note:
    shown = [(_label(e[0]), _throughput(spec, gpu, e[0]), e[1].device_bytes) for e in ranked[:RANKED_SHOWN]]
    more = max(0, len(ranked) - RANKED_SHOWN)
    parts = [f"{label} {speed:,.0f} tok/s" for label, speed, _ in shown]
    text = "fitting setups, fastest first (estimated): " + "; ".join(parts) + (f" (+{more} more)" if more else "")
    data: dict[str, NoteValue] = {
        "setups": [label for label, _, _ in shown],
        "tokens_per_second": [speed for _, speed, _ in shown],
        "device_bytes": [n for _, _, n in shown],
        "more": more,
    }
    return Note(code="rank.fitting", data=data, text=text)


def gpu_notes(card: GPU, pinned: dict[str, Any]) -> list[Note]:
    """What the card changes: a name resolved to a catalog card, 16-bit work in fp16 without bf16."""
    notes: list[Note] = []
    if card.resolved_from:
        text = f"{card.resolved_from!r} resolved to {card.name} ({card.memory_mib} MiB as the driver reports it)"
        data: dict[str, NoteValue] = {"name": card.resolved_from, "gpu": card.name, "memory_mib": card.memory_mib}
        notes.append(Note(code="gpu.resolved", data=data, text=text))
    if not card.bf16_supported and "precision" not in pinned:
        text = f"{card.name} has no bf16: 16-bit work runs in fp16"
        notes.append(Note(code="gpu.no_bf16", data={"gpu": card.name, "precision": "fp16"}, text=text))
    return notes


def short_by_note(card: GPU, est: Estimate) -> Note:
    text = f"nothing weighed fits {card.name}: the smallest needs {_gib(est.device_bytes)} of {_gib(card.memory_bytes)}"
    data: dict[str, NoteValue] = {
        "gpu": card.name,
        "device_bytes": est.device_bytes,
        "memory_bytes": card.memory_bytes,
        "short_bytes": est.device_bytes - card.memory_bytes,
    }
    return Note(code="fit.short_by", data=data, text=text)


def host_short_note(need: int, host: int) -> Note:
    text = f"does not fit the host: {_gib(need)} of page-locked RAM needed, {_gib(host)} given"
    data = {"host_bytes": need, "host_ram_bytes": host, "short_bytes": need - host}
    return Note(code="fit.host_short", data=data, text=text)


def _host_note(need: int, host: int | None) -> Note:
    have = f" of the {_gib(host)} given" if host is not None else " (pass --host-ram to check it)"
    text = (
        f"host RAM: {_gib(need)} per node for the offloaded state{have}, pinned (page-locked), beside the"
        " process's own RAM"
    )
    return Note(code="host.ram", data={"host_bytes": need, "host_ram_bytes": host}, text=text)


#: errors that mean a pinned layout cannot run on this many GPUs: ``--gpus auto`` moves on.
AUTO_SKIPS = ("parallel", "offload", "num_nodes", "fsdp_sharding")
#: set while ``--gpus auto`` weighs a GPU count: a plan that does not fit skips its suggestions.
_PROBING: ContextVar[bool] = ContextVar("vramplan_probing", default=False)


def _auto_gpus(model: str, gpu: str, host_ram_gib: float | None, pinned: dict[str, Any]) -> Plan:
    """The fewest GPUs (one node of up to 8, then nodes of 8) with a layout that fits."""
    counts = AUTO_GPUS
    if "num_nodes" in pinned:  # the node count is fixed: only the GPUs per node vary
        counts = [(n, pinned["num_nodes"]) for n in range(1, 9)]

    planned: dict[tuple[int, bool], Plan | None] = {}

    def at(i: int, probe: bool = True) -> Plan | None:
        """The plan at ``counts[i]``, None when the pinned layout cannot run there; while
        probing, a plan that does not fit skips its suggestions and alternatives."""
        if (i, probe) not in planned:
            planned[i, probe] = _plan_count(model, gpu, host_ram_gib, pinned, counts[i], probe)
        return planned[i, probe]

    found, last = _fewest(counts, at)
    if found is not None:
        n, nodes = counts[found]
        p = cast(Plan, at(found))  # a plan that fits is the same probed or not
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
    model: str, gpu: str, host_ram_gib: float | None, pinned: dict[str, Any], count: tuple[int, int], probe: bool
) -> Plan | None:
    """The plan on ``count`` (GPUs per node, nodes), None when the pinned layout cannot run
    there; probing, a plan that does not fit skips its suggestions and alternatives."""
    n, nodes = count
    fields = {**pinned, "num_gpus": n, "num_nodes": nodes}
    if n * nodes == 1:
        fields.pop("parallel", None)
        fields.pop("offload", None)
    token = _PROBING.set(probe)
    try:
        return plan(model, gpu, host_ram_gib=host_ram_gib, **fields)
    except VramplanError as exc:
        if exc.field in AUTO_SKIPS:
            return None
        raise
    finally:
        _PROBING.reset(token)


def _fewest(counts: list[tuple[int, int]], at: Callable[[int], Plan | None]) -> tuple[int | None, int | None]:
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
            if p is not None and p.fits:
                return i
        return None

    def doubling(lo: int, hi: int) -> int | None:
        below, i, step = lo - 1, lo, 1  # below: the largest count known not to fit
        while True:
            p = plan_at(i)
            if p is None or isinstance(p, VramplanError):
                return in_order(lo, hi)
            if p.fits:
                break
            if i == hi:
                return None
            below, i, step = i, min(hi, i + step), 2 * step
        while i - below > 1:
            mid = (below + i) // 2
            p = plan_at(mid)
            if p is None or isinstance(p, VramplanError):
                return in_order(lo, hi)
            below, i = (below, mid) if p.fits else (mid, i)
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


def _rl_note(setup: Setup, est: Estimate) -> Note:
    from vramplan.memory.rl import generation_batch

    train = max(v for k, v in est.phases.items() if k not in ("generate", "reference", "old_logprobs"))
    data: dict[str, NoteValue] = {
        "rl": setup.rl,
        "vllm": setup.vllm,
        "generate_bytes": est.phases["generate"],
        "generation_batch": generation_batch(setup),
        "old_logprobs_bytes": est.phases.get("old_logprobs"),
        "reference_bytes": est.phases.get("reference"),
        "training_bytes": train,
        "peak_phase": est.phase,
    }
    if setup.vllm == "none":
        parts = [f"generate {_gib(est.phases['generate'])} ({generation_batch(setup)} sequences' KV cache)"]
    else:
        parts = [f"generate {_gib(est.phases['generate'])} (vLLM's share beside the policy)"]
        parts.append(f"old log-probs {_gib(est.phases['old_logprobs'])}")
    if "reference" in est.phases:
        parts.append(f"reference log-probs {_gib(est.phases['reference'])}")
    parts.append(f"training {_gib(train)}")
    how = "HF generate" if setup.vllm == "none" else "vLLM colocated"
    text = (
        f"{setup.rl.upper()} phases (allocated): " + ", ".join(parts) + f"; peak in {est.phase}."
        f" {how}; TRL's fused LM head scores the completion tokens without full logits;"
        " the time model does not cover generation"
    )
    return Note(code="rl.phases", data=data, text=text)


def _vllm_note(spec: ModelSpec, setup: Setup) -> Note:
    from vramplan.memory import rl, vision

    images = vision.image_tokens(spec, setup)
    need = rl.vllm_needs(spec, setup, images)
    share = rl.vllm_share_bytes(setup)
    n = rl.vllm_concurrent_sequences(spec, setup, images)
    batch = rl.generation_batch(setup)
    data: dict[str, NoteValue] = {
        "share_bytes": share,
        "gpu_memory_utilization": setup.vllm_gpu_memory_utilization,
        "sleep": setup.vllm_sleep,
        "weights_bytes": need["weights"],
        "activations_bytes": need["activations"],
        "kv_one_sequence_bytes": need["kv_one_sequence"],
        "sequence_tokens": setup.seq_len + images,
        "concurrent_sequences": n,
        "generation_batch": batch,
        "waves": -(-batch // n) if n >= 1 else None,
    }
    held = "freed after each generation (sleep mode)" if setup.vllm_sleep else "held through the whole step"
    util = setup.vllm_gpu_memory_utilization
    head = f"vLLM colocated: {_gib(share)} of the card (gpu_memory_utilization {util:g}), {held}"
    inside = (
        f"; inside it: weights {_gib(need['weights'])}, profiled activations {_gib(need['activations'])},"
        f" {_gib(need['kv_one_sequence'])} of KV cache per {setup.seq_len + images}-token sequence"
    )
    if n < 1:
        text = head + inside + ": vLLM cannot start (no room for one sequence): raise --vllm-memory"
        return Note(code="rl.vllm", data=data, text=text)
    waves = "" if n >= batch else f", so it generates the {batch} completions in {-(-batch // n)} waves"
    return Note(code="rl.vllm", data=data, text=head + inside + f"; room for {n} sequences at once{waves}")


def _image_note(spec: ModelSpec, setup: Setup, est: Estimate) -> Note:
    from vramplan.memory import vision

    parts = []
    data: dict[str, NoteValue] = {}
    if setup.images_per_sample:
        patches, tokens = vision.image_grid(spec, setup)
        n = setup.images_per_sample
        size = setup.image_size or "448x448"
        parts.append(
            f"images: {n} x {size} per sample = {n * patches:,} ViT patches and {n * tokens:,} language-model tokens"
        )
        data |= {"images_per_sample": n, "image_size": size, "image_patches": n * patches, "image_tokens": n * tokens}
    if setup.video_frames:
        steps, patches, tokens = vision.video_grid(spec, setup)
        size = setup.video_size or "448x448"
        parts.append(
            f"video: {setup.video_frames} frames of {size} = {steps} frame pairs, {steps * patches:,} ViT patches"
            f" and {steps * tokens:,} language-model tokens"
        )
        data |= {
            "video_frames": setup.video_frames,
            "video_size": size,
            "frame_pairs": steps,
            "video_patches": steps * patches,
            "video_tokens": steps * tokens,
        }
    extra = vision.image_tokens(spec, setup)
    trained = vision.tower_trained(setup)
    tower = "trained (full fine-tuning)" if trained else "frozen"
    vision_forward = est.phases.get("vision_forward", 0)
    data |= {
        "seq_len": setup.seq_len,
        "media_tokens": extra,
        "tower_trained": trained,
        "vision_forward_bytes": vision_forward,
    }
    text = (
        "; ".join(parts) + f" (sequence {setup.seq_len} + {extra:,}); vision tower {tower}; its forward phase peaks at"
        f" {_gib(vision_forward)} allocated"
    )
    return Note(code="media.tokens", data=data, text=text)


def _search(
    spec: ModelSpec, gpu: GPU, fields_list: list[dict[str, Any]], host: int | None = None
) -> list[tuple[Setup, Estimate, bool]]:
    """Weigh candidates group by group (one method and precision), most preferred first.

    Memory never falls as the micro-batch grows and checkpointing only lowers it, so a
    group's last candidate (micro-batch 1, checkpointing) is its smallest: when even that does
    not fit, nothing else in the group is weighed; otherwise the group is weighed in order up
    to its first fit, its best."""
    out: list[tuple[Setup, Estimate, bool]] = []
    for group in _groups(fields_list):
        smallest = _evaluate(spec, gpu, group[-1], host)
        if not smallest[2]:
            out.append(smallest)
            continue
        for fields in group[:-1]:
            item = _evaluate(spec, gpu, fields, host)
            out.append(item)
            if item[2]:
                break
        else:
            out.append(smallest)
    return out


def _groups(fields_list: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
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


def _alternatives(
    evaluated: list[tuple[Setup, Estimate, bool]], chosen: tuple[Setup, Estimate, bool], gpu: GPU, spec: ModelSpec
) -> list[Alternative]:
    """The best setup of each method/precision, with why it was or was not chosen."""
    best: dict[tuple[str, ...], tuple[Setup, Estimate, bool]] = {}
    for item in evaluated:
        s = item[0]
        key = (s.method, s.precision, s.quant, s.parallel, s.offload)
        if key not in best or (item[2] and not best[key][2]):
            best[key] = item
        elif (
            not item[2]
            and not best[key][2]
            and (item[1].device_bytes, s.micro_batch) < (best[key][1].device_bytes, best[key][0].micro_batch)
        ):
            best[key] = item
    out = []
    c = chosen[0]
    order = {m: i for i, m in enumerate(("full", "freeze", "lora", "qlora", "inference"))}
    for item in best.values():
        s, est, fits = item
        same_class = (s.method, s.precision, s.quant) == (c.method, c.precision, c.quant)
        verdict: Verdict
        if item is chosen or s == c:
            which = "the fastest setup of the most preferred method" if c.rl == "none" else "the most preferred setup"
            verdict, reason = (
                "chosen",
                f"chosen: {which} that fits" if fits else "chosen: the smallest, but it does not fit",
            )
        elif not fits:
            verdict, reason = (
                "does_not_fit",
                f"does not fit: needs {_gib(est.device_bytes)} of {_gib(gpu.memory_bytes)}",
            )
        elif same_class:
            verdict, reason = "fits_slower", f"fits ({_gib(est.device_bytes)}), slower than the chosen setup"
        elif (order[s.method], s.precision) > (order[c.method], c.precision) or s.method == c.method:
            verdict = "ranks_below"
            reason = f"fits ({_gib(est.device_bytes)}) but ranks below the chosen setup ({_label(c)})"
        else:
            verdict, reason = "fits", f"fits ({_gib(est.device_bytes)})"
        speed = step = None
        if s.method != "inference" and s.rl == "none":
            from vramplan.timing import data_parallel_replicas, step_time

            t = step_time(spec, s, gpu)
            speed, step = t.tokens_per_second * data_parallel_replicas(s), t.seconds_per_step
        out.append(
            Alternative(
                setup=s,
                fits=fits,
                device_bytes=est.device_bytes,
                chosen=s == chosen[0],
                reason=f"{_label(s)}: {reason}",
                verdict=verdict,
                tokens_per_second=speed,
                seconds_per_step=step,
            )
        )
    return out
