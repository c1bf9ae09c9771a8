"""plan(): pick the setup that fits a card, with the breakdown and the alternatives.

Preference when a field is not pinned: the highest-fidelity method that fits
(full AMP > full pure 16-bit > LoRA > QLoRA), then the largest micro-batch, then
gradient checkpointing only if needed.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from vramplan.errors import VramplanError
from vramplan.gpus import GPU, resolve_gpu
from vramplan.memory import Estimate, estimate
from vramplan.models import load_model
from vramplan.params import ParamCounts, param_counts
from vramplan.setup import Setup, make_setup
from vramplan.spec import ModelSpec
from vramplan.units import GIB

MICRO_BATCHES = (8, 4, 2, 1)
SEQ_LEN_FLOOR = 256


class Peak(BaseModel):
    model_config = ConfigDict(frozen=True)
    phase: str
    allocated_bytes: int
    reserved_bytes: int
    device_bytes: int


class Alternative(BaseModel):
    """A setup that was weighed, whether it fits, and why it was or was not chosen."""

    model_config = ConfigDict(frozen=True)
    setup: Setup
    fits: bool
    device_bytes: int
    chosen: bool
    reason: str


class Plan(BaseModel):
    """The answer for one model on one card."""

    model_config = ConfigDict(frozen=True)
    model: str
    gpu: GPU
    setup: Setup
    fits: bool
    headroom_bytes: int
    peak: Peak
    terms: dict[str, int]
    phases: dict[str, int]
    params: ParamCounts
    total_params: int
    trainable_params: int
    alternatives: list[Alternative]
    notes: list[str]
    source: str = ""  # the model as the user named it (catalog name, hub id or path)

    def emit(self, target: str, *, data: str = "data.jsonl", force: bool = False) -> Any:
        """This plan as files for ``target`` (trl, swift, llamafactory, axolotl): see
        :func:`vramplan.emit.emit`."""
        from vramplan.emit import emit

        return emit(self, target, data=data, force=force)

    def __rich__(self) -> Any:
        from vramplan.render import plan_renderable

        return plan_renderable(self)

    def _repr_html_(self) -> str:
        from vramplan.render import plan_html

        return plan_html(self)


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


def candidates(pinned: dict[str, Any], gpu: GPU) -> list[dict[str, Any]]:
    """Every setup to weigh, most preferred first."""
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
            for mb in [pinned["micro_batch"]] if "micro_batch" in pinned else MICRO_BATCHES:
                gcs = [pinned["grad_checkpointing"]] if "grad_checkpointing" in pinned else [False, True]
                if method == "inference":
                    gcs = [False]
                for gc in gcs:
                    fields = {
                        **pinned,
                        "method": method,
                        "precision": precision,
                        "micro_batch": mb,
                        "grad_checkpointing": gc,
                    }
                    if method == "qlora" and quant is None:
                        fields["quant"] = "bnb-nf4"
                    out.append(fields)
    return out


def _evaluate(spec: ModelSpec, gpu: GPU, fields: dict[str, Any]) -> tuple[Setup, Estimate, bool]:
    setup = make_setup(**fields)
    est = estimate(spec, setup)
    return setup, est, est.device_bytes <= gpu.memory_bytes


def _label(s: Setup) -> str:
    if s.method == "inference":
        return f"inference{' ' + s.quant if s.quant != 'none' else ''} {s.precision} batch {s.micro_batch}"
    method = s.method if s.method != "qlora" else f"qlora {s.quant}"
    gc = "GC" if s.grad_checkpointing else "no GC"
    return f"{method} {s.precision} mb{s.micro_batch} {gc}"


def _first_fit(spec: ModelSpec, gpu: GPU, pinned: dict[str, Any]) -> tuple[Setup, Estimate] | None:
    for fields in candidates(pinned, gpu):
        try:
            setup, est, fits = _evaluate(spec, gpu, fields)
        except VramplanError:
            return None
        if fits:
            return setup, est
    return None


def _suggestions(spec: ModelSpec, gpu: GPU, pinned: dict[str, Any]) -> list[str]:
    """The cheapest changes that make it fit: release one pinned choice and search again,
    switch to an 8-bit optimizer, or shorten the sequence."""
    tries: list[tuple[str, dict[str, Any]]] = []
    for key in pinned:
        if key in ("seq_len",):
            continue
        tries.append((f"without pinning {key}={pinned[key]}", {k: v for k, v in pinned.items() if k != key}))
    if "optimizer" not in pinned:
        tries.append(("--optimizer adamw-8bit", {**pinned, "optimizer": "adamw-8bit"}))
    seq = pinned.get("seq_len", Setup.model_fields["seq_len"].default) // 2
    while seq >= SEQ_LEN_FLOOR:
        tries.append((f"--seq-len {seq}", {**pinned, "seq_len": seq}))
        seq //= 2
    out = []
    for label, fields in tries:
        found = _first_fit(spec, gpu, fields)
        if found:
            out.append(f"{label}: {_label(found[0])}, {_gib(found[1].device_bytes)} on the device")
            if label.startswith("--seq-len"):
                break  # the longest sequence that fits is the cheapest cut
    return out


def plan(model: str, gpu: str = "4090", **pinned: Any) -> Plan:
    """Plan fine-tuning ``model`` on one ``gpu``. Any Setup field can be pinned by keyword;
    the rest are searched. Bad input raises :class:`vramplan.errors.VramplanError`."""
    pinned = {k: v for k, v in pinned.items() if v is not None}
    unknown = sorted(set(pinned) - set(Setup.model_fields))
    if unknown:
        raise VramplanError(unknown[0], f"not a setup field; allowed: {', '.join(Setup.model_fields)}")
    spec = load_model(model)
    card = resolve_gpu(gpu)
    make_setup(**{k: v for k, v in pinned.items() if k not in ("method", "quant", "kv_cache")})
    _check_against_gpu(pinned, card)
    notes: list[str] = []
    if spec.moe is not None and "lora_targets" not in pinned and pinned.get("method") in (None, "lora", "qlora"):
        pinned["lora_targets"] = ",".join(lin.name for lin in spec.attention if lin.nn_linear)
        notes.append(
            f"MoE: LoRA on the attention ({pinned['lora_targets']}); PEFT's all-linear would also wrap the"
            " router and the fused experts, which the estimate does not model yet"
        )
    if card.resolved_from:
        notes.append(f"{card.resolved_from!r} resolved to {card.name} ({card.memory_mib} MiB as the driver reports it)")
    if not card.bf16_supported and "precision" not in pinned:
        notes.append(f"{card.name} has no bf16: 16-bit work runs in fp16")

    evaluated = _search(spec, card, candidates(pinned, card))
    fitting = [e for e in evaluated if e[2]]
    chosen = fitting[0] if fitting else min(evaluated, key=lambda e: (e[1].device_bytes, e[0].micro_batch))
    setup, est, fits = chosen

    alternatives = _alternatives(evaluated, chosen, card)
    if setup.images_per_sample:
        notes.append(_image_note(spec, setup, est))
    if not fits:
        notes.append(
            f"nothing weighed fits {card.name}: the smallest needs {_gib(est.device_bytes)} "
            f"of {_gib(card.memory_bytes)}"
        )
        notes += [f"would fit {s}" for s in _suggestions(spec, card, pinned)]
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
    )


def _image_note(spec: ModelSpec, setup: Setup, est: Estimate) -> str:
    from vramplan.memory import vision

    patches, tokens = vision.image_grid(spec, setup)
    n = setup.images_per_sample
    size = setup.image_size or "448x448"
    tower = "trained (full fine-tuning)" if vision.tower_trained(setup) else "frozen"
    return (
        f"images: {n} x {size} per sample = {n * patches:,} ViT patches and {n * tokens:,} language-model tokens"
        f" (sequence {setup.seq_len} + {n * tokens:,}); vision tower {tower}; its forward phase peaks at"
        f" {_gib(est.phases.get('vision_forward', 0))} allocated"
    )


def _search(spec: ModelSpec, gpu: GPU, fields_list: list[dict[str, Any]]) -> list[tuple[Setup, Estimate, bool]]:
    """Weigh candidates group by group (one method and precision), most preferred first.

    Memory never falls as the micro-batch grows and checkpointing only lowers it, so a
    group's last candidate (micro-batch 1, checkpointing) is its smallest: when even that does
    not fit, nothing else in the group is weighed; otherwise the group is weighed in order up
    to its first fit, its best."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for fields in fields_list:
        groups.setdefault((fields["method"], fields["precision"], fields.get("quant")), []).append(fields)
    out: list[tuple[Setup, Estimate, bool]] = []
    for group in groups.values():
        smallest = _evaluate(spec, gpu, group[-1])
        if not smallest[2]:
            out.append(smallest)
            continue
        for fields in group[:-1]:
            item = _evaluate(spec, gpu, fields)
            out.append(item)
            if item[2]:
                break
        else:
            out.append(smallest)
    return out


def _alternatives(
    evaluated: list[tuple[Setup, Estimate, bool]], chosen: tuple[Setup, Estimate, bool], gpu: GPU
) -> list[Alternative]:
    """The best setup of each method/precision, with why it was or was not chosen."""
    best: dict[tuple[str, str, str], tuple[Setup, Estimate, bool]] = {}
    for item in evaluated:
        s = item[0]
        key = (s.method, s.precision, s.quant)
        if key not in best or (item[2] and not best[key][2]):
            best[key] = item
        elif (
            not item[2]
            and not best[key][2]
            and (item[1].device_bytes, s.micro_batch) < (best[key][1].device_bytes, best[key][0].micro_batch)
        ):
            best[key] = item
    out = []
    chosen_rank = evaluated.index(chosen)
    for item in best.values():
        s, est, fits = item
        if item is chosen or s == chosen[0]:
            reason = (
                "chosen: the most preferred setup that fits" if fits else "chosen: the smallest, but it does not fit"
            )
        elif not fits:
            reason = f"does not fit: needs {_gib(est.device_bytes)} of {_gib(gpu.memory_bytes)}"
        elif evaluated.index(item) > chosen_rank:
            reason = f"fits ({_gib(est.device_bytes)}) but ranks below the chosen setup ({_label(chosen[0])})"
        else:
            reason = f"fits ({_gib(est.device_bytes)})"
        out.append(
            Alternative(
                setup=s,
                fits=fits,
                device_bytes=est.device_bytes,
                chosen=s == chosen[0],
                reason=f"{_label(s)}: {reason}",
            )
        )
    return out
