"""plan(): pick the setup that fits a card, with the breakdown and the alternatives.

The façade: plan() checks the pinned fields against the model and the card, fills in the
choices the model's family makes (:func:`family_defaults`), runs the search (search.py), ranks
what fits by the time model, and writes the alternatives and notes (advice.py); with
``num_gpus="auto"`` it plans GPU counts until the fewest that fits (auto.py). When nothing
fits, :func:`_suggestions` plans again with one choice changed.
"""

from __future__ import annotations

import functools
import os
from typing import Any

from typing_extensions import Unpack  # typing's from Python 3.11; pydantic depends on typing_extensions

from vramplan import advice, auto, search, verdict
from vramplan.arch import for_transformers
from vramplan.errors import VramplanError, shown
from vramplan.frameworks import framework
from vramplan.gpus import GPU, resolve_gpu
from vramplan.limits import MAX_HOST_RAM_GIB, said
from vramplan.memory import forward_cache, fsdp
from vramplan.memory.host import host_terms
from vramplan.memory.policy import with_policy
from vramplan.models import load_model
from vramplan.params import param_counts
from vramplan.plan_fields import PlanFields
from vramplan.policy import PolicyOf
from vramplan.results import PLAN_ACTIONS, Alternative, Estimate, Note, NoteValue, Peak, Plan
from vramplan.setup import Setup, check_fields, make_setup
from vramplan.setup_rules import check_against_gpu
from vramplan.spec import ModelSpec
from vramplan.stack import transformers_major
from vramplan.units import GIB

#: Alternative, Peak and Plan live in results.py; imported from here too by code written before.
__all__ = ["Alternative", "Peak", "Plan", "family_defaults", "plan"]

SEQ_LEN_FLOOR = 256


def _value(v: Any) -> NoteValue:
    """A pinned value as note data: a tuple as a list, anything else that is not a number,
    a name or a flag as its text."""
    if isinstance(v, (list, tuple)):
        return [x if isinstance(x, (bool, int, float, str)) or x is None else str(x) for x in v]
    return v if isinstance(v, (bool, int, float, str)) or v is None else str(v)


def _suggestions(spec: ModelSpec, gpu: GPU, pinned: dict[str, Any], host: int | None, policy: PolicyOf) -> list[Note]:
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
        found = search.first_fit(spec, gpu, family_defaults(spec, fields)[0], host, policy)
        if found:
            setup, est = found
            field = str(change["field"])
            if change["change"] == "release" and getattr(setup, field) == pinned[field]:
                # the released choice came back: what made it fit is what else the search changed
                if setup.offload == pinned.get("offload", "none"):
                    continue
                label = f"with --offload {setup.offload}"
                change = {"change": "set", "field": "offload", "value": setup.offload}
            text = f"would fit {label}: {search.label(setup)}, {advice.gib(est.device_bytes)} on the device"
            data = {**change, "setup": search.label(setup), "device_bytes": est.device_bytes}
            out.append(Note(code="fit.suggestion", data=data, text=text))
            if change["field"] == "seq_len":
                break  # the longest sequence that fits is the cheapest cut
    return out + _more_cards(spec, gpu, pinned, host, policy)


#: the GPU counts per node weighed for "how many of this card" (one node)
CARD_COUNTS = (2, 4, 8)


def _more_cards(spec: ModelSpec, gpu: GPU, pinned: dict[str, Any], host: int | None, policy: PolicyOf) -> list[Note]:
    """What hardware makes the pinned setup fit: the fewest of this card under each layout
    that splits the model (ZeRO-3, FSDP; one node), and the smallest catalog card that holds
    it alone (``fit.suggestion`` notes with ``field`` num_gpus or gpu)."""
    out = []
    if pinned.get("num_gpus", 1) == 1 and pinned.get("num_nodes", 1) == 1 and "parallel" not in pinned:
        for layout in ("zero3", "fsdp"):
            for n in CARD_COUNTS:
                fields = family_defaults(spec, {**pinned, "num_gpus": n, "parallel": layout})[0]
                found = search.first_fit(spec, gpu, fields, host, policy)
                if found:
                    setup, est = found
                    text = (
                        f"would fit on {n} x {gpu.name} with --parallel {layout}: {search.label(setup)},"
                        f" {advice.gib(est.device_bytes)} on each"
                    )
                    data: dict[str, NoteValue] = {
                        "change": "set",
                        "field": "num_gpus",
                        "value": n,
                        "parallel": layout,
                        "setup": search.label(setup),
                        "device_bytes": est.device_bytes,
                    }
                    out.append(Note(code="fit.suggestion", data=data, text=text))
                    break
    if pinned.get("num_gpus", 1) == 1 and pinned.get("num_nodes", 1) == 1:
        from vramplan.gpus import gpu_catalog

        bigger = sorted(
            (c for c in gpu_catalog().values() if c.memory_bytes > gpu.memory_bytes and c.vendor == gpu.vendor),
            key=lambda c: (c.memory_bytes, c.key),
        )
        for card in bigger:
            found = search.first_fit(spec, card, family_defaults(spec, pinned)[0], host, policy)
            if found:
                setup, est = found
                text = (
                    f"would fit on one {card.name} ({advice.gib(card.memory_bytes)}), the smallest card in the"
                    f" catalog that holds it: {search.label(setup)}, {advice.gib(est.device_bytes)}"
                )
                data = {
                    "change": "set",
                    "field": "gpu",
                    "value": card.key,
                    "setup": search.label(setup),
                    "device_bytes": est.device_bytes,
                }
                out.append(Note(code="fit.suggestion", data=data, text=text))
                break
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
    # transformers 5's fused experts: PEFT adapts them through ParamWrapper (transformers 4: nn.Linear)
    wrapped = any(lin.param_target_rank for group, _ in spec.layer_groups for lin in group)
    # experts all-linear would adapt: nn.Linear ones (transformers 4) or PEFT's target_parameters;
    # none for GPT-OSS, whose bare expert parameters PEFT leaves alone (arch/gpt_oss.py)
    adaptable = any(lin.nn_linear or lin.param_target_rank for lin in spec.moe_mlp)
    if adaptable and "lora_targets" not in pinned and pinned.get("method") in (None, "lora", "qlora"):
        targets = [lin.name for lin in spec.attention if lin.nn_linear]
        pinned["lora_targets"] = ",".join(targets)
        how = (
            "PEFT's ParamWrapper: far more trainable parameters and a folded copy of each layer's expert weights"
            if wrapped
            else "an adapter on each expert's nn.Linear: far more trainable parameters"
        )
        text = (
            f"MoE: LoRA on the attention ({pinned['lora_targets']}); --lora-targets all-linear also adapts the"
            f" router and every expert ({how})"
            if not spec.all_linear_refused
            else f"MoE: LoRA on the attention ({pinned['lora_targets']}); all-linear is refused:"
            f" {spec.all_linear_refused}"
        )
        notes.append(Note(code="moe.lora_targets", data={"targets": list(targets)}, text=text))
    moe_all_linear = str(pinned.get("lora_targets", "")).strip().lower() == "all-linear"
    if wrapped and moe_all_linear and "lora_dropout" not in pinned:
        pinned["lora_dropout"] = 0.0
        text = "MoE all-linear: lora_dropout 0, as PEFT's ParamWrapper on the experts requires"
        notes.append(Note(code="moe.lora_dropout", data={"lora_dropout": 0.0}, text=text))
    return pinned, notes


Weighed = tuple[Setup, Estimate, bool]


def _chosen(
    spec: ModelSpec,
    card: GPU,
    pinned: dict[str, Any],
    evaluated: list[Weighed],
    host: int | None,
    policy: PolicyOf,
    notes: list[Note],
) -> tuple[Weighed, list[Weighed]]:
    """The setup chosen among the weighed ones (the fastest of the preferred class that fits,
    else the smallest) and every setup weighed, with the ranking's note when it ranked several."""
    fitting = [e for e in evaluated if e[2]]
    chosen = fitting[0] if fitting else min(evaluated, key=lambda e: (e[1].device_bytes, e[0].micro_batch))
    if fitting and chosen[0].method != "inference" and chosen[0].rl == "none":
        ranked = search.rank_class(spec, card, pinned, chosen[0], host, policy)
        chosen = ranked[0]
        evaluated = [e for e in evaluated if e[0] not in {r[0] for r in ranked}] + ranked
        unpinned_offload = "offload" not in pinned and host is None
        if unpinned_offload and chosen[0].offload != "none":
            instead = _faster_without_offload(spec, card, pinned, evaluated, chosen, host, policy)
            if instead is not None:
                notes.append(advice.offload_trade_note(spec, card, chosen, instead[0], host_terms(spec, chosen[0])))
                chosen, ranked = instead[0], instead[1]
                evaluated = [e for e in evaluated if e[0] not in {r[0] for r in ranked}] + ranked
        if len(ranked) > 1:
            notes.append(advice.ranking_note(spec, card, ranked))
    return chosen, evaluated


def _faster_without_offload(
    spec: ModelSpec,
    card: GPU,
    pinned: dict[str, Any],
    evaluated: list[Weighed],
    chosen: Weighed,
    host: int | None,
    policy: PolicyOf,
) -> tuple[Weighed, list[Weighed]] | None:
    """The fastest setup of the same method that fits without CPU offload, with its class ranked
    (no offload only), when it is faster than ``chosen``: offload needs pinned host RAM the user
    has not stated, so a faster layout without it is taken first (None when there is none)."""
    method = chosen[0].method
    plain = [e for e in evaluated if e[2] and e[0].offload == "none" and e[0].method == method]
    if not plain:
        return None
    ranked = [e for e in search.rank_class(spec, card, pinned, plain[0][0], host, policy) if e[0].offload == "none"]
    if not ranked:
        return None
    if search.throughput(spec, card, ranked[0][0]) <= search.throughput(spec, card, chosen[0]):
        return None
    return ranked[0], ranked


def plan(
    model: str,
    gpu: str = "4090",
    *,
    host_ram_gib: float | None = None,
    trainer: str = "trl",
    transformers: int | None = None,
    **fields: Unpack[PlanFields],
) -> Plan:
    """Plan fine-tuning ``model`` on ``gpu``. Any Setup field can be pinned by keyword (typed:
    vramplan/plan_fields.py ``PlanFields``); the rest are searched. With more than one GPU and
    no ``parallel``, the layouts are weighed too and the fastest that fits is chosen;
    ``num_gpus="auto"`` finds the fewest cards that fit. ``host_ram_gib``: the RAM of each
    node, checked against what CPU offload puts there.
    ``trainer``: the registered trainer (vramplan.frameworks) whose policy every setup is
    estimated under: ``trl`` (TRL's SFTTrainer/GRPOTrainer) by default; ``hf`` is the plain
    transformers Trainer loop of a user's own script.
    ``transformers``: the transformers major version (4 or 5) the run uses, where it changes memory
    (a mixture of experts' modules, vramplan/stack.py); default: the installed one, else 5.
    Bad input raises :class:`vramplan.errors.VramplanError`."""
    if isinstance(model, os.PathLike):
        model = os.fspath(model)
    if not isinstance(trainer, str):
        raise VramplanError("trainer", f"name a trainer, got {shown(trainer)}")
    fw = framework(trainer)
    policy = fw.policy
    major, major_source = transformers_major(transformers)
    given: dict[str, Any] = dict(fields)
    fewest = given.get("num_gpus") == "auto"
    pinned = check_fields({k: v for k, v in given.items() if v is not None and not (fewest and k == "num_gpus")})
    if fewest:
        again = functools.partial(plan, trainer=trainer, transformers=transformers)
        return auto.auto_gpus(again, model, gpu, host_ram_gib, pinned)
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
    spec = for_transformers(load_model(model), major)
    card = resolve_gpu(gpu)
    if (pinned.get("freeze_vision") or pinned.get("freeze_projector")) and spec.vision is None:
        raise VramplanError(
            "freeze_vision", f"{spec.name} has no vision tower: --freeze-vision/--freeze-projector apply to VLMs"
        )
    frozen_parts = bool(pinned.get("freeze_vision") or pinned.get("freeze_projector"))
    if frozen_parts and "method" not in pinned:
        pinned["method"] = "full"  # only full fine-tuning trains the tower or projector to begin with
    check = {k: v for k, v in pinned.items() if k not in ("method", "quant", "kv_cache")}
    if frozen_parts:
        check["method"] = pinned["method"]
    if check.get("rl", "none") != "none" and ("micro_batch" not in check or "grad_accum" not in check):
        check.update(search.batches(pinned)[0])
    if "parallel" not in check and check.get("num_gpus", 1) * check.get("num_nodes", 1) > 1:
        check["parallel"] = "zero3" if check.get("offload", "none") != "none" else "ddp"
    make_setup(**check)
    check_against_gpu(pinned, card)  # setup_rules.GPU_RULES
    pinned, notes = family_defaults(spec, pinned)
    notes += advice.model_notes(spec)
    if spec.transformers:
        notes.append(advice.stack_note(spec, major_source))
    notes += advice.gpu_notes(card, pinned)
    notes += advice.trainer_notes(fw)

    listed = search.candidates(pinned, card)
    evaluated = search.weigh(spec, card, listed, host, policy)
    tight = not any(e[2] for e in evaluated)
    safe = search.SAFE.set(not tight)  # nothing fits safely: the best that fits at all, tight
    try:
        if tight:
            evaluated = search.weigh(spec, card, listed, host, policy)
        chosen, evaluated = _chosen(spec, card, pinned, evaluated, host, policy, notes)
    finally:
        search.SAFE.reset(safe)
    setup, est, fits = chosen
    if setup.parallel == "zero3" and setup.world_size == 1 and setup.offload == "none":
        notes.append(advice.zero3_one_gpu_note())
    run = with_policy(setup, policy(setup))  # the setup as the trainer runs it
    host_need = host_terms(spec, run)
    if host_need:
        need = sum(host_need.values())
        notes.append(advice.host_note(need, host))
        if host is not None and need > host:
            fits = False
            notes.append(advice.host_short_note(need, host))
    # --gpus auto weighing a count that does not fit drops the plan: nothing to compare
    alternatives = [] if auto.PROBING.get() and not fits else advice.alternatives(evaluated, chosen, card, spec)
    notes += advice.context_notes(spec, setup)
    if setup.has_media:
        notes.append(advice.media_note(spec, setup, est))
    if setup.rl != "none":
        notes.append(advice.rl_note(setup, est))
    if setup.vllm != "none":
        notes.append(advice.vllm_note(spec, run, card.memory_bytes))
    notes += advice.padding_notes(run)
    if setup.lengths == "variable":
        from vramplan.memory.lengths import lengths_note

        notes.append(lengths_note(est, spec, run, card.memory_bytes))
    if est.terms.get(fsdp.TERM, 0):
        notes.append(fsdp.pools_note(est, card.memory_bytes))
    layers_note = forward_cache.forward_segments_note(est, card.memory_bytes)
    if layers_note is not None and setup.lengths != "variable":  # the lengths note says the reading then
        notes.append(layers_note)
    answer = verdict.verdict(verdict.needed(est), card.memory_bytes) if fits else "does not fit"
    if not fits:
        notes.append(advice.short_by_note(card, est))
    elif answer == "tight":
        notes.append(advice.tight_note(card, est))
    if answer != "fits" and not auto.PROBING.get():  # --gpus auto weighing a count: no suggestions needed
        notes += _suggestions(spec, card, pinned, host, policy)  # what fits safely
    return Plan(
        model=spec.name,
        trainer=trainer,
        gpu=card,
        setup=setup,
        fits=fits,
        verdict=answer,
        headroom_bytes=card.memory_bytes - verdict.needed(est),
        peak=Peak(
            phase=est.phase,
            allocated_bytes=est.allocated_bytes,
            reserved_bytes=est.reserved_bytes,
            device_bytes=est.device_bytes,
            needed_bytes=est.needed_bytes,
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


def _what_if(p: Plan, changes: dict[str, Any]) -> Plan:
    """Plan.what_if: ``p``'s setup with ``changes``, every other field pinned, on the same card,
    trainer, host RAM and transformers version."""
    fields = {**p.setup.model_dump(), **changes}
    if "rl" in changes and changes["rl"] == "none":  # GRPO's own fields go with it
        for k in ("num_generations", "completion_len", "beta", "vllm", "vllm_gpu_memory_utilization", "vllm_sleep"):
            fields.pop(k, None)
    major = next((n.data["transformers"] for n in p.notes if n.code == "stack.transformers"), None)
    host = None if p.host_ram_bytes is None else p.host_ram_bytes / GIB
    return plan(
        p.source or p.model,
        p.gpu.key,
        host_ram_gib=host,
        trainer=p.trainer,
        transformers=major if isinstance(major, int) else None,
        **fields,
    )


def _report(p: Plan, path: Any) -> Any:
    from vramplan.report import write_report

    return write_report(p, path)


def _plot(p: Plan, path: Any) -> Any:
    from vramplan.report import plot_plan_png

    return plot_plan_png(p, path)


def _chart(p: Plan) -> str:
    from vramplan.report import peak_bars_svg

    return peak_bars_svg(p)


PLAN_ACTIONS.update(what_if=_what_if, report=_report, plot=_plot, chart=_chart)
