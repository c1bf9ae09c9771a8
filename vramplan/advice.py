"""What a plan says beside its numbers: the alternatives weighed, with why each was or was not
chosen, and the notes (results.Note: a code, its data and the sentence), one builder per code.
results.py lists the codes and what their data holds."""

from __future__ import annotations

from typing import Any

from vramplan import search, verdict
from vramplan.arch.registry import family
from vramplan.frameworks.base import Framework, installed_version, outside_established
from vramplan.gpus import GPU
from vramplan.memory import rl, vision
from vramplan.memory.policy import policy_of
from vramplan.results import Alternative, Estimate, Note, NoteValue, Verdict
from vramplan.setup import Setup
from vramplan.spec import ModelSpec
from vramplan.timing import data_parallel_replicas, missing_figure, step_time
from vramplan.units import GIB


def gib(n: int) -> str:
    return f"{n / GIB:.2f} GiB"


#: fitting setups the plan lists beside the chosen one, fastest first.
RANKED_SHOWN = 5


def ranking_note(spec: ModelSpec, gpu: GPU, ranked: list[tuple[Setup, Estimate, bool]]) -> Note:
    """``rank.fitting``: the fitting setups, fastest first, each with its tok/s; on a card
    without the published figures the time model needs, the order only, and why no speed."""
    top = ranked[:RANKED_SHOWN]
    more = max(0, len(ranked) - RANKED_SHOWN)
    tail = f" (+{more} more)" if more else ""
    labels = [search.label(e[0]) for e in top]
    missing = missing_figure(gpu, top[0][0]) if top else None
    speeds = [] if missing else [search.throughput(spec, gpu, e[0]) for e in top]
    data: dict[str, NoteValue] = {
        "setups": labels,
        "tokens_per_second": speeds,
        "device_bytes": [e[1].device_bytes for e in top],
        "more": more,
    }
    if missing:
        what = "bandwidth" if missing == "memory_bandwidth_gb_s" else "TFLOPs"
        data["missing_figure"] = missing
        text = f"fitting setups, ranked by the relative time model: no published {what} for {gpu.name}: "
        return Note(code="rank.fitting", data=data, text=text + "; ".join(labels) + tail)
    parts = [f"{label} {speed:,.0f} tok/s" for label, speed in zip(labels, speeds, strict=True)]
    text = "fitting setups, fastest first (estimated): " + "; ".join(parts) + tail
    return Note(code="rank.fitting", data=data, text=text)


def offload_trade_note(
    spec: ModelSpec,
    gpu: GPU,
    offloaded: tuple[Setup, Estimate, bool],
    taken: tuple[Setup, Estimate, bool],
    host: dict[str, int],
) -> Note:
    """``rank.offload``: the preferred precision fits only with CPU offload, which needs pinned host
    RAM the user did not state; a faster setup without offload was taken instead."""
    slow, fast = search.throughput(spec, gpu, offloaded[0]), search.throughput(spec, gpu, taken[0])
    need = sum(host.values())
    text = (
        f"took {search.label(taken[0])} ({fast:,.0f} tok/s) over {search.label(offloaded[0])} ({slow:,.0f} tok/s,"
        f" {gib(need)} of pinned host RAM per node): faster, and no host RAM to provide; pin --offload"
        f" {offloaded[0].offload} --precision {offloaded[0].precision} (and --host-ram) to take the other"
    )
    data: dict[str, NoteValue] = {
        "taken": search.label(taken[0]),
        "taken_tokens_per_second": fast,
        "offloaded": search.label(offloaded[0]),
        "offloaded_tokens_per_second": slow,
        "host_bytes": need,
    }
    return Note(code="rank.offload", data=data, text=text)


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


def model_notes(spec: ModelSpec) -> list[Note]:
    """``model.approximate``: no family module reads the model (arch/generic.py);
    ``model.tower_text_only``: a vision tower counted, not planned (Llama 4)."""
    notes: list[Note] = []
    if spec.vision is None and spec.tower_params:
        counted = spec.tower_params + spec.tower_projector_params
        text = (
            f"{spec.model_type}: the vision tower and projector ({counted / 1e9:.2f}B parameters) are counted in the"
            " weights, not their activations: planned for text batches, which leave the tower without gradients"
        )
        data: dict[str, NoteValue] = {"model_type": spec.model_type, "tower_params": counted}
        notes.append(Note(code="model.tower_text_only", data=data, text=text))
    if spec.checkpoint_quant:
        text = (
            f"{spec.model_type}: the checkpoint's experts are {spec.checkpoint_quant.upper()}; transformers trains them"
            f" dequantized (Mxfp4Config(dequantize=True)), so the weights are planned in {spec.torch_dtype}; QLoRA"
            " needs a bf16 copy of the weights (transformers refuses a BitsAndBytesConfig on this checkpoint)"
        )
        data = {"model_type": spec.model_type, "checkpoint_quant": spec.checkpoint_quant, "dtype": spec.torch_dtype}
        notes.append(Note(code="model.checkpoint_dequantized", data=data, text=text))
    if not spec.approximate:
        return notes
    from vramplan.arch.generic import MARGIN_PCT

    text = (
        f"approximate: {spec.approximate}; read as a Llama-style decoder (q/k/v/o attention, gated MLP, RMSNorm,"
        f" embeddings untied unless the config ties them) with {MARGIN_PCT}% added to every phase"
        " (overhead/approximation); 'vramplan trace MODEL' runs transformers' own code for it"
    )
    data = {"model_type": spec.model_type, "margin_pct": MARGIN_PCT}
    return [*notes, Note(code="model.approximate", data=data, text=text)]


def context_notes(spec: ModelSpec, setup: Setup) -> list[Note]:
    """``model.context``: a sequence past the context the model's config declares."""
    limit = spec.max_position_embeddings
    if not limit or setup.seq_len <= limit:
        return []
    text = (
        f"--seq-len {setup.seq_len:,} is past {spec.name}'s context of {limit:,} tokens (max_position_embeddings):"
        " it was not trained on such lengths; extend it with rope scaling in the config, or shorten the sequence"
    )
    return [Note(code="model.context", data={"seq_len": setup.seq_len, "max_position_embeddings": limit}, text=text)]


def padding_notes(setup: Setup) -> list[Note]:
    """``lengths.padding``: the samples' mean (``--avg-tokens`` or the lengths file's) below the cap
    under fixed lengths: the plan counts every
    sample at ``seq_len`` (and the emitted configs pad to it where the trainer can), so a step
    trains only the real tokens; packing fills the rows at the same memory (memory/lengths.py:
    packed batches are the fixed-length numbers)."""
    from vramplan.frameworks.files.run_options import step_tokens

    tokens = step_tokens(setup)
    if tokens is None:
        return []
    real, planned, avg = tokens
    data: dict[str, NoteValue] = {
        "avg_tokens": avg,
        "seq_len": setup.seq_len,
        "real_tokens_per_step": real,
        "planned_tokens_per_step": planned,
        "samples_per_packed_row": round(setup.seq_len / avg, 1),
    }
    # a trainer that packs only under flash-attention (memory/run.py check_lengths) is told so
    flash = setup.attention != "flash-attn-2" and policy_of(setup).packing_needs_flash
    packed = "--lengths packed --attention flash-attn-2" if flash else "--lengths packed"
    text = (
        f"samples average {avg} of the {setup.seq_len} tokens each batch is counted at (--lengths"
        f" fixed, padded to it): a step trains about {real:,} real tokens of the {planned:,} its memory is planned"
        f" for ({real / planned:.0%}); {packed} fills each row with about"
        f" {setup.seq_len / avg:.1f} samples at the same memory, --lengths variable pads each batch"
        " to its longest sample instead"
    )
    return [Note(code="lengths.padding", data=data, text=text)]


def stack_note(spec: ModelSpec, source: str) -> Note:
    """``stack.transformers``: the transformers major version whose modules the plan describes
    (a family whose modules differ between versions: vramplan/stack.py)."""
    why = {"given": "as given", "installed": "the installed release's", "default": "transformers is not installed"}
    if any(lin.routed and lin.nn_linear for lin in spec.moe_mlp):  # transformers 4's Mixtral, Qwen3-MoE, DeepSeek
        how = "experts as per-expert nn.Linear layers: bitsandbytes quantizes them, all-linear adapts each"
    elif any(lin.routed for lin in spec.moe_mlp):  # GPT-OSS: fused in both, looped over in 4's training forward
        how = "fused experts looped over in training, index_add_ keeping each expert's output for backward"
    else:  # transformers 5; and Qwen3-VL-MoE in 4, whose router alone is an nn.Linear there
        how = "experts fused into two parameters per layer: bitsandbytes leaves them unquantized"
        experts = spec.moe.num_experts if spec.moe is not None else 0
        if any(lin.nn_linear and lin.count == 1 and lin.out_features == experts for lin in spec.moe_mlp):
            how += " (the router an nn.Linear, quantized and adapted)"
    fam = family(spec.model_type)
    if fam is not None and fam.stack_effect is not None:  # a family whose difference is not its experts
        how = fam.stack_effect(spec.transformers)
    other = 5 if spec.transformers == 4 else 4
    text = f"transformers {spec.transformers} ({why[source]}): {how}; --transformers {other} plans the other"
    data: dict[str, NoteValue] = {"transformers": spec.transformers, "source": source}
    return Note(code="stack.transformers", data=data, text=text)


def trainer_notes(fw: Framework) -> list[Note]:
    """Which trainer's run the numbers describe, and (``trainer.version``) a warning when the
    installed release is not the series its policy was read from."""
    data: dict[str, NoteValue] = {"trainer": fw.name, "package": fw.package, "established": fw.established}
    text = f"trainer: {fw.name}, {fw.title}; its memory behaviour as read from {fw.package} {fw.established}"
    notes = [Note(code="trainer.policy", data=data, text=text)]
    installed = installed_version(fw.package)
    if outside_established(fw, installed):
        text = (
            f"{fw.package} {installed} is installed; the {fw.name} policy was read from {fw.package}"
            f" {fw.established}.x, so its memory behaviour may differ"
        )
        notes.append(Note(code="trainer.version", data={**data, "installed": installed}, text=text))
    return notes


def zero3_one_gpu_note() -> Note:
    text = (
        "ZeRO-3 on one GPU shards nothing: it only adds DeepSpeed's fp32 master and buffers; use --offload"
        " optimizer or optimizer+params to move state to the host, or plan without --parallel"
    )
    return Note(code="parallel.zero3_one_gpu", data={"parallel": "zero3", "world_size": 1}, text=text)


def host_note(need: int, host: int | None) -> Note:
    have = f" of the {gib(host)} given" if host is not None else " (pass --host-ram to check it)"
    text = (
        f"host RAM: {gib(need)} per node for the offloaded state{have}, pinned (page-locked), beside the"
        " process's own RAM"
    )
    return Note(code="host.ram", data={"host_bytes": need, "host_ram_bytes": host}, text=text)


def host_short_note(need: int, host: int) -> Note:
    text = f"does not fit the host: {gib(need)} of page-locked RAM needed, {gib(host)} given"
    data = {"host_bytes": need, "host_ram_bytes": host, "short_bytes": need - host}
    return Note(code="fit.host_short", data=data, text=text)


def short_by_note(card: GPU, est: Estimate) -> Note:
    need = verdict.needed(est)  # what the card must offer: cache torch frees before out-of-memory left out
    text = f"nothing weighed fits {card.name}: the smallest needs {gib(need)} of {gib(card.memory_bytes)}"
    data: dict[str, NoteValue] = {
        "gpu": card.name,
        "device_bytes": est.device_bytes,
        "needed_bytes": need,
        "memory_bytes": card.memory_bytes,
        "short_bytes": need - card.memory_bytes,
    }
    return Note(code="fit.short_by", data=data, text=text)


def tight_note(card: GPU, est: Estimate) -> Note:
    """The plan fits the card but not with the margin measured runs ask for (verdict.py)."""
    pct = verdict.margin_pct()
    need = verdict.needed(est)
    safe = verdict.safe_bytes(need)
    text = (
        f"tight: needs {gib(need)} of {gib(card.memory_bytes)}, but one measured run in ten went"
        f" {pct:.1f}% above its estimate, {gib(safe)} here: {gib(safe - card.memory_bytes)} more than the card"
    )
    data: dict[str, NoteValue] = {
        "gpu": card.name,
        "device_bytes": need,
        "memory_bytes": card.memory_bytes,
        "margin_pct": pct,
        "safe_bytes": safe,
        "short_bytes": safe - card.memory_bytes,
    }
    return Note(code="fit.tight", data=data, text=text)


def rl_note(setup: Setup, est: Estimate) -> Note:
    train = max(v for k, v in est.phases.items() if k not in ("generate", "reference", "old_logprobs"))
    data: dict[str, NoteValue] = {
        "rl": setup.rl,
        "vllm": setup.vllm,
        "generate_bytes": est.phases["generate"],
        "generation_batch": rl.generation_batch(setup),
        "old_logprobs_bytes": est.phases.get("old_logprobs"),
        "reference_bytes": est.phases.get("reference"),
        "training_bytes": train,
        "peak_phase": est.phase,
    }
    if setup.vllm == "none":
        parts = [f"generate {gib(est.phases['generate'])} ({rl.generation_batch(setup)} sequences' KV cache)"]
    else:
        parts = [f"generate {gib(est.phases['generate'])} (vLLM's share beside the policy)"]
        parts.append(f"old log-probs {gib(est.phases['old_logprobs'])}")
    if "reference" in est.phases:
        parts.append(f"reference log-probs {gib(est.phases['reference'])}")
    parts.append(f"training {gib(train)}")
    how = "HF generate" if setup.vllm == "none" else "vLLM colocated"
    text = (
        f"{setup.rl.upper()} phases (allocated): " + ", ".join(parts) + f"; peak in {est.phase}."
        f" {how}; TRL's fused LM head scores the completion tokens without full logits;"
        " the time model does not cover generation"
    )
    return Note(code="rl.phases", data=data, text=text)


def vllm_note(spec: ModelSpec, setup: Setup, card_bytes: int) -> Note:
    images = vision.image_tokens(spec, setup)
    need = rl.vllm_needs(spec, setup, images)
    share = rl.vllm_share_bytes(setup, card_bytes)
    n = rl.vllm_concurrent_sequences(spec, setup, card_bytes, images)
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
    head = f"vLLM colocated: {gib(share)} of the card (gpu_memory_utilization {util:g}), {held}"
    inside = (
        f"; inside it: weights {gib(need['weights'])}, profiled activations {gib(need['activations'])},"
        f" {gib(need['kv_one_sequence'])} of KV cache per {setup.seq_len + images}-token sequence"
    )
    if n < 1:
        text = head + inside + ": vLLM cannot start (no room for one sequence): raise --vllm-memory"
        return Note(code="rl.vllm", data=data, text=text)
    waves = "" if n >= batch else f", so it generates the {batch} completions in {-(-batch // n)} waves"
    return Note(code="rl.vllm", data=data, text=head + inside + f"; room for {n} sequences at once{waves}")


def media_note(spec: ModelSpec, setup: Setup, est: Estimate) -> Note:
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
        f" {gib(vision_forward)} allocated"
    )
    return Note(code="media.tokens", data=data, text=text)


def alternatives(
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
        kind: Verdict
        if item is chosen or s == c:
            which = "the fastest setup of the most preferred method" if c.rl == "none" else "the most preferred setup"
            kind = "chosen"
            reason = f"chosen: {which} that fits" if fits else "chosen: the smallest, but it does not fit"
        elif not fits:
            kind = "does_not_fit"
            reason = f"does not fit: needs {gib(verdict.needed(est))} of {gib(gpu.memory_bytes)}"
        elif same_class:
            kind = "fits_slower"
            reason = f"fits ({gib(est.device_bytes)}), slower than the chosen setup"
        elif (order[s.method], s.precision) > (order[c.method], c.precision) or s.method == c.method:
            kind = "ranks_below"
            reason = f"fits ({gib(est.device_bytes)}) but ranks below the chosen setup ({search.label(c)})"
        else:
            kind = "fits"
            reason = f"fits ({gib(est.device_bytes)})"
        speed = step = None
        if s.method != "inference" and s.rl == "none" and not missing_figure(gpu, s):
            t = step_time(spec, s, gpu)
            speed, step = t.tokens_per_second * data_parallel_replicas(s), t.seconds_per_step
        out.append(
            Alternative(
                setup=s,
                fits=fits,
                device_bytes=est.device_bytes,
                chosen=s == chosen[0],
                reason=f"{search.label(s)}: {reason}",
                verdict=kind,
                tokens_per_second=speed,
                seconds_per_step=step,
            )
        )
    return out
