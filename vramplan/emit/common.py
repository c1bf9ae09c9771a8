"""What every target shares: the re-estimate, the reasons with numbers, the header."""

from __future__ import annotations

import functools
import importlib
import math
import re
import shlex
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

from vramplan.arch import family
from vramplan.errors import DoesNotFit, VramplanError, one_line
from vramplan.gpus import GPU
from vramplan.memory import Estimate, estimate, vision
from vramplan.memory.host import host_terms
from vramplan.models import catalog_sources, load_model
from vramplan.setup import Setup
from vramplan.spec import ModelSpec
from vramplan.units import GIB

if TYPE_CHECKING:
    from vramplan.planner import Plan

TARGETS = ("trl", "swift", "llamafactory", "axolotl")


class Emitted(BaseModel):
    """The files of one target (name -> text), the command that starts the run, the Setup
    they encode and what had to change for the target."""

    model_config = ConfigDict(frozen=True)
    target: str
    files: dict[str, str]
    command: str
    setup: Setup
    adjustments: list[str]
    fits: bool
    device_bytes: int
    allocated_bytes: int


class Context(BaseModel):
    """Everything a target's renderer needs."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)
    model_name: str
    model_path: str
    gpu: GPU
    setup: Setup
    est: Estimate
    fits: bool
    headroom_bytes: int
    reasons: dict[str, str]
    adjustments: list[str]
    data: str
    total_params: int
    trainable_params: int
    embedding_name: str = "embed_tokens"
    model_type: str = ""
    vocab_size: int = 0
    num_layers: int = 0
    hidden_size: int = 0
    host_bytes: int = 0  # CPU offload: host RAM per node the plan puts there
    vision: bool = False  # a vision-language model (text-only training unless ``images`` is set)
    images: dict[str, int] | None = None  # GRPO image prompts: per_prompt, max_pixels, tokens_per_image
    lm_linears: list[str] = []  # the language model's linear layers (a VLM's LoRA stays on them)
    decoder_layer: str = ""  # the transformers class FSDP wraps (ModelSpec.decoder_layer)
    chat_templates: dict[str, str] = {}  # trainer -> its chat template name (ModelSpec.chat_templates)


def gib(n: int) -> str:
    return f"{n / GIB:.2f} GiB"


# -- writing user values into generated files -------------------------------------------
# Every value that reaches an emitted file goes through one of these: a Python literal
# (``py_literal``), a shell word (``sh_quote``), a YAML scalar (``yaml_scalar``), JSON
# (``json.dumps``), or a comment line (``comment_block``). Values no format can hold are
# refused first (``check_text``).


def check_text(field: str, value: str) -> str:
    """``value`` if every emitted format can hold it; else a one-line error naming ``field``.
    NUL cannot reach a path or an argument; a lone surrogate (an undecodable byte in a file
    name) cannot be written as UTF-8 text."""
    if "\x00" in value:
        raise VramplanError(field, f"{value!r} holds a NUL character, which no file name or argument can")
    if any(0xD800 <= ord(c) <= 0xDFFF for c in value):
        raise VramplanError(field, f"{value!r} is not valid UTF-8 text: rename it to emit a config for it")
    return value


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise VramplanError("emit", f"{value} is not a finite number: no trainer option takes it")
    return value


def printable(text: str) -> str:
    """``text`` for one comment line: every character Python does not print (line breaks
    of any kind: \\n, \\r, U+0085, U+2028, U+2029; other controls; bidirectional
    overrides) written as its escape, so a value cannot end the comment it sits in."""
    return one_line(text)


def comment_block(lines: list[str], marker: str = "# ") -> str:
    """The comment lines of an emitted file, each on one line (:func:`printable`)."""
    return "\n".join(marker + printable(line) for line in lines)


def py_literal(value: Any) -> str:
    """A Python literal for a str/int/float/bool/None or a list/tuple/dict of them:
    ``repr``, which escapes every non-printable character, after refusing NaN/inf
    (``repr`` gives ``nan``, a name the script does not define)."""
    _walk_finite(value)
    return repr(value)


def _walk_finite(value: Any) -> None:
    if isinstance(value, float):
        _finite(value)
    elif isinstance(value, dict):
        for v in value.values():
            _walk_finite(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _walk_finite(v)


def sh_quote(value: str) -> str:
    """One shell word that expands to exactly ``value``, on one line: ``shlex.quote`` (single
    quotes, so ``$()``, backticks, ``#``, ``;`` are literal); a value with a character that
    does not print (a line break, a tab, U+2028) is written as ``$'...'`` with those
    characters' UTF-8 bytes as octal escapes, which every locale reads alike (bash, zsh, ksh;
    POSIX.1-2024 sh, "Dollar-Single-Quotes")."""
    if value.isprintable():
        return shlex.quote(value)
    out = []
    for ch in value:
        if ch in "\\'":
            out.append("\\" + ch)
        elif ch.isprintable():
            out.append(ch)
        else:
            out.extend(f"\\{b:03o}" for b in ch.encode("utf-8"))
    return "$'" + "".join(out) + "'"


#: a module name PEFT, ms-swift, LLaMA-Factory and axolotl can all be given (letters,
#: digits, ``_``, and ``.`` between parts: ``q_proj``, ``mlp.gate_proj``, ``layers.0.fc1``)
MODULE_NAME = re.compile(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*")


def check_module_names(field: str, names: list[str]) -> list[str]:
    """Module names as given, or a one-line error naming ``field`` and the first bad one."""
    for name in names:
        if not MODULE_NAME.fullmatch(name):
            raise VramplanError(
                field, f"{name!r} is not a module name: use letters, digits, '_' and '.' (like q_proj,mlp.up_proj)"
            )
    return names


def model_path(name: str, source: str) -> str:
    """Where the trainer loads the model from: a local folder (or the folder of a config
    path) as an absolute path, so it loads from wherever the printed command runs; else the
    hub id of a catalog model, else what the user passed. A path wins over a catalog name
    exactly when it does for the plan (:func:`vramplan.models.load_config`: an existing path
    first), so ``mymodel`` with no slash is the local folder when one is there; a hub id
    (``org/name``) is kept as written."""
    from pathlib import Path

    if source:
        path = Path(source).expanduser()
        if path.exists():
            if not path.is_dir():
                path = path.parent
            return str(path.resolve())
        if source.endswith(".json"):
            return str(path.parent.absolute())
        if "/" in source:  # a hub id as the user wrote it (an alias of the catalog entry, an -Instruct variant)
            return source
    src = catalog_sources().get(name)
    if src is not None:
        return src.hub_id
    return source or name


def _dev_on(card_bytes: int, spec: ModelSpec, setup: Setup, **change: Any) -> int | None:
    try:
        s = setup.model_copy(update=change)
        Setup.model_validate(s.model_dump())
        return estimate(spec, s, card_bytes=card_bytes).device_bytes
    except (VramplanError, ValueError):
        return None


def reasons(spec: ModelSpec, setup: Setup, est: Estimate, gpu: GPU) -> dict[str, str]:
    """Why each memory-relevant setting is what it is, with the device-tier numbers that
    decide it (the estimate with the setting changed, on the same card)."""
    _dev = functools.partial(_dev_on, gpu.memory_bytes)
    out: dict[str, str] = {}
    here = est.device_bytes
    cap = gpu.memory_bytes

    def verdict(n: int | None) -> str:
        if n is None:
            return "not possible here"
        return f"{gib(n)}, {'fits' if n <= cap else 'does not fit'}"

    at = f"at seq {setup.seq_len} x micro-batch {setup.micro_batch}"
    if setup.grad_checkpointing:
        off = _dev(spec, setup, grad_checkpointing=False)
        if off is not None:
            out["grad_checkpointing"] = f"saves {gib(off - here)} {at} (off: {verdict(off)})"
    else:
        on = _dev(spec, setup, grad_checkpointing=True)
        if on is not None:
            out["grad_checkpointing"] = f"off: on would save {gib(here - on)} and cost ~30% speed"
    more = _dev(spec, setup, micro_batch=setup.micro_batch + 1)
    if more is not None:
        out["micro_batch"] = f"one more sample per step adds {gib(more - here)} ({verdict(more)})"
    if setup.grad_accum > 1:
        out["grad_accum"] = (
            f"effective batch {setup.micro_batch * setup.grad_accum} without its activations; "
            "gradients are kept between micro-batches"
        )
    out["seq_len"] = "the estimate counts every sample at this length: shorter samples need less"
    if setup.method in ("lora", "qlora"):
        full = _dev(spec, setup, method="full", quant="none", trainable_extra=())
        out["method"] = (
            f"{setup.method}: {est.trainable_params:,} trainable; full fine-tuning would need {verdict(full)}"
        )
        if setup.method == "qlora":
            base = _dev(spec, setup, method="lora", quant="none")
            out["quant"] = f"{setup.quant} base weights; a 16-bit base would need {verdict(base)}"
        out["lora_rank"] = f"r={setup.lora_rank}: adapters plus their grads and optimizer state are small"
    else:
        lora = _dev(spec, setup, method="lora", quant="none")
        out["method"] = f"{setup.method}: {est.trainable_params:,} trainable; LoRA would need {verdict(lora)}"
    if setup.optimizer in ("adamw", "adamw-fused", "paged-adamw-32bit"):
        eight = _dev(spec, setup, optimizer="adamw-8bit")
        if eight is not None and here - eight > 0:
            out["optimizer"] = f"{setup.optimizer}: 8-bit AdamW would save {gib(here - eight)}"
        else:
            out["optimizer"] = f"{setup.optimizer}: its state is small here"
    else:
        adamw = _dev(spec, setup, optimizer="adamw")
        if adamw is not None:
            out["optimizer"] = f"{setup.optimizer}: saves {gib(adamw - here)} against AdamW"
    if setup.precision in ("bf16", "fp16"):
        amp = _dev(spec, setup, precision="amp-" + setup.precision)
        out["precision"] = (
            f"{setup.precision} weights under autocast; fp32 master weights (AMP) would need {verdict(amp)}"
        )
    else:
        out["precision"] = f"{setup.precision}"
    if setup.attention != "eager":
        eager = _dev(spec, setup, attention="eager")
        if eager is not None and eager - here >= GIB // 100:
            out["attention"] = f"{setup.attention}: eager attention would add {gib(eager - here)}"
        elif eager is not None:
            out["attention"] = f"{setup.attention}: eager attention would peak about the same here"
    if setup.vllm != "none":
        from vramplan.memory import rl

        share = rl.vllm_share_bytes(setup, gpu.memory_bytes)
        held = "freed outside generation (sleep mode)" if setup.vllm_sleep else "held through the step"
        out["vllm"] = (
            f"vLLM colocated takes {gib(share)} of the card, {held};"
            f" room for {rl.vllm_concurrent_sequences(spec, setup, gpu.memory_bytes, vision.image_tokens(spec, setup))}"
            " full-length sequences at once"
        )
    if setup.images_per_sample:
        smaller = _dev(spec, setup, images_per_sample=0, image_size="")
        if smaller is not None:
            out["image_size"] = f"the images add {gib(here - smaller)} over text-only prompts"
    return out


def _check_values(plan: Plan, data: str) -> None:
    """Refuse what no emitted format can hold, naming the field (see :func:`check_text`)."""
    check_text("model", plan.model)
    check_text("model", plan.source)
    check_text("data", data)
    s = plan.setup
    targets = s.lora_target_list() if s.is_lora else None
    if targets is not None:
        check_module_names("lora_targets", targets)
    for field, value in s.model_dump().items():
        if isinstance(value, float) and not math.isfinite(value):
            raise VramplanError(field, f"{value} is not a finite number: no trainer option takes it")


def header_lines(ctx: Context, target: str) -> list[str]:
    """The comment block every emitted file starts with (no comment marker)."""
    est = ctx.est
    s = ctx.setup
    lines = [
        f"vramplan plan for {target}: {ctx.model_name}"
        + (f" ({ctx.model_path})" if ctx.model_path != ctx.model_name else "")
        + f", {ctx.total_params:,} params, on {ctx.gpu.name}"
        f" ({ctx.gpu.memory_mib:,} MiB as the driver reports it)",
        f"estimated peak per GPU ({est.phase}): allocated {gib(est.allocated_bytes)}"
        f" (torch.cuda.max_memory_allocated), reserved {gib(est.reserved_bytes)}"
        f" (max_memory_reserved), device {gib(est.device_bytes)} (nvidia-smi)",
    ]
    if ctx.fits:
        lines.append(f"headroom: {gib(ctx.headroom_bytes)} of {gib(ctx.gpu.memory_bytes)}")
    else:
        lines.append(
            f"WILL NOT FIT: needs {gib(est.device_bytes)}, the card has {gib(ctx.gpu.memory_bytes)}"
            f" ({gib(-ctx.headroom_bytes)} over); emitted on request (--force)"
        )
    lines.append(
        f"setup: {s.method}{' ' + s.quant if s.method == 'qlora' else ''}, {s.precision}, {s.optimizer},"
        f" seq {s.seq_len}, micro-batch {s.micro_batch}, grad-accum {s.grad_accum},"
        f" {'gradient checkpointing' if s.grad_checkpointing else 'no checkpointing'}, {s.attention}"
        + (f", LoRA r{s.lora_rank} alpha {s.lora_alpha:g} on {s.lora_targets}" if s.is_lora else "")
    )
    if s.rl != "none":
        phases = ", ".join(f"{k} {gib(v)}" for k, v in est.phases.items() if k in ("generate", "reference"))
        lines.append(
            f"{s.rl.upper()}: {s.num_generations} completions per prompt, prompt {s.seq_len - s.completion_len} +"
            f" completion {s.completion_len} tokens, beta {s.beta:g}; allocated by phase: {phases},"
            f" training {gib(max(v for k, v in est.phases.items() if k not in ('generate', 'reference')))}"
        )
    for note in ctx.adjustments:
        lines.append(f"CHANGED FOR {target}: {note}")
    return lines


def layout_lines(ctx: Context) -> list[str]:
    """What the multi-GPU layout is and that the figures above are per GPU (none on one GPU)."""
    s = ctx.setup
    if s.parallel == "none":
        return []
    where = f"{s.num_gpus} GPUs" if s.num_nodes == 1 else f"{s.num_nodes} nodes x {s.num_gpus} GPUs"
    if s.parallel == "device_map":
        lines = [f"layout: device_map, the layers split across {where} in one process; each card's own peak:"]
        for card in ctx.est.cards:
            lines.append(
                f"  GPU {card.index} ({card.holds}): allocated {gib(card.allocated_bytes)},"
                f" device {gib(card.device_bytes)} ({card.phase})"
            )
        return lines
    name = {"zero1": "DeepSpeed ZeRO-1", "zero2": "DeepSpeed ZeRO-2", "zero3": "DeepSpeed ZeRO-3"}.get(
        s.parallel, "FSDP " + s.fsdp_sharding if s.parallel == "fsdp" else s.parallel.upper()
    )
    line = f"layout: {name} on {where} ({s.world_size} processes); every figure above is per GPU"
    if s.offload != "none":
        line += f"; CPU offload of the {s.offload.replace('+', ' and ')}: {gib(ctx.host_bytes)} of host RAM per node"
    return [line]


def why_lines(ctx: Context, options: dict[str, str]) -> list[str]:
    """``option: value  # reason`` for each memory-relevant setting the target spells."""
    out = ["why each memory-relevant setting:"]
    for field, option in options.items():
        reason = ctx.reasons.get(field)
        if reason:
            out.append(f"  {option}  # {reason}")
    return out


def image_settings(spec: ModelSpec, setup: Setup) -> dict[str, int] | None:
    """What an emitted script needs to feed the images the plan counts: images per prompt,
    the processor's ``max_pixels`` (the resized image the plan counts, so a WxH image gives
    exactly the planned tokens and a larger one is shrunk to them) and tokens per image."""
    if not setup.images_per_sample or spec.vision is None:
        return None
    patches, tokens = vision.image_grid(spec, setup)
    return {
        "per_prompt": setup.images_per_sample,
        "max_pixels": patches * spec.vision.patch_size**2,
        "tokens_per_image": tokens,
    }


def emit(plan: Plan, target: str, *, data: str = "data.jsonl", force: bool = False) -> Emitted:
    """Render ``plan`` for ``target``."""
    if target not in TARGETS:
        raise VramplanError("emit", f"unknown target {target!r}; targets: {', '.join(TARGETS)}")
    if plan.setup.method == "inference":
        raise VramplanError("emit", "the targets are fine-tuning trainers: an inference plan has nothing to emit")
    if plan.setup.video_frames:
        raise VramplanError("emit", "training with videos is not emitted yet: plan it, then set the trainer by hand")
    if plan.setup.images_per_sample and target != "trl":
        raise VramplanError(
            "emit",
            f"{target}: training with images is emitted for trl only (--emit trl: SFTTrainer or GRPOTrainer with"
            " the model's processor); plan it, then set the trainer by hand",
        )
    moe_all_linear = plan.setup.is_lora and plan.setup.lora_targets.strip().lower() == "all-linear"
    if moe_all_linear and target != "trl" and load_model(plan.source or plan.model).moe is not None:
        raise VramplanError(
            "emit",
            f"{target}: its all-linear option does not reach a MoE's router and fused experts, which the plan counts"
            " (PEFT adds them for the literal 'all-linear'): --emit trl, or plan with named targets",
        )
    if plan.setup.rl != "none" and target != "trl":
        raise VramplanError("emit", f"{target}: GRPO plans are emitted for trl only (--emit trl: GRPOTrainer)")
    mod = importlib.import_module(f"vramplan.emit.{target}")
    spec = load_model(plan.source or plan.model)
    _check_values(plan, data)
    if spec.remote_code:
        fam = family(spec.model_type)
        raise VramplanError(
            "emit",
            f"{spec.name} is a remote-code architecture ({fam.label if fam else spec.model_type}): the emitted"
            " trainers load transformers' own models; plan it, then set the trainer by hand",
        )
    if spec.vision is not None and (target != "trl" or plan.setup.parallel == "fsdp"):
        why = "FSDP wrapping of a vision tower is not planned" if target == "trl" else "its trainer loads text models"
        raise VramplanError(
            "emit",
            f"{spec.name} is a vision-language model and {why}: --emit trl writes its text-only training"
            " (language model LoRA/full, no images) on one GPU, DDP, ZeRO or device_map",
        )
    setup, adjustments = mod.adapt(plan.setup, spec)
    card = plan.gpu.memory_bytes
    est = estimate(spec, setup, card_bytes=card) if setup != plan.setup else estimate(spec, plan.setup, card_bytes=card)
    fits = est.device_bytes <= plan.gpu.memory_bytes
    if not fits and not force:
        raise DoesNotFit(
            "emit",
            f"the plan does not fit {plan.gpu.name}: needs {gib(est.device_bytes)} of {gib(plan.gpu.memory_bytes)}"
            f" ({gib(est.device_bytes - plan.gpu.memory_bytes)} over); pass --force to emit it anyway",
        )
    ctx = Context(
        model_name=plan.model,
        model_path=model_path(plan.model, plan.source),
        gpu=plan.gpu,
        setup=setup,
        est=est,
        fits=fits,
        headroom_bytes=plan.gpu.memory_bytes - est.device_bytes,
        reasons=reasons(spec, setup, est, plan.gpu),
        adjustments=adjustments,
        data=data,
        total_params=est.total_params,
        trainable_params=est.trainable_params,
        embedding_name=spec.embedding_name,
        model_type=spec.model_type,
        vocab_size=spec.vocab_size,
        num_layers=spec.num_layers,
        hidden_size=spec.hidden_size,
        host_bytes=sum(host_terms(spec, setup).values()),
        vision=spec.vision is not None,
        images=image_settings(spec, setup),
        lm_linears=sorted({lin.name for lin in spec.layer_linears(0) if lin.nn_linear}),
        decoder_layer=spec.decoder_layer,
        chat_templates=dict(spec.chat_templates),
    )
    files, command = mod.render(ctx)
    return Emitted(
        target=target,
        files=files,
        command=command,
        setup=setup,
        adjustments=adjustments,
        fits=fits,
        device_bytes=est.device_bytes,
        allocated_bytes=est.allocated_bytes,
    )


#: scalars a YAML 1.1 reader (PyYAML, OmegaConf) resolves to a bool, null or float when written plain
YAML_RESOLVED = frozenset(
    ["true", "false", "yes", "no", "on", "off", "y", "n", "null", "~", ".inf", ".nan", "-.inf", "+.inf"]
)


def yaml_quote(text: str) -> str:
    """``text`` as a YAML double-quoted scalar that reads back exactly: ``"`` and ``\\``
    escaped, and every character YAML does not print or reads as a line break (C0/C1
    controls, DEL, U+0085, U+2028, U+2029, the BOM) written as an escape (YAML 1.1 spec,
    5.1 character set and 5.7 escaped characters)."""
    out = ['"']
    for ch in text:
        code = ord(ch)
        if ch in '"\\':
            out.append("\\" + ch)
        elif 0x20 <= code <= 0x7E or (0xA0 <= code <= 0xFFFD and code not in (0x2028, 0x2029, 0xFEFF)) or code > 0xFFFF:
            if 0xD800 <= code <= 0xDFFF:
                out.append(f"\\u{code:04x}")
            else:
                out.append(ch)
        elif code <= 0xFF:
            out.append(f"\\x{code:02x}")
        elif code <= 0xFFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


def yaml_scalar(value: Any) -> str:
    """A YAML scalar or flow list; strings plain only when they read back as the same
    string, else double-quoted (:func:`yaml_quote`)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return repr(value)
    if isinstance(value, float):
        _finite(value)
        text = repr(value)  # YAML 1.1 (PyYAML, OmegaConf) reads 1e-05 as a string: write 1.0e-05
        return text.replace("e", ".0e", 1) if "e" in text and "." not in text else text
    if isinstance(value, list):
        return "[" + ", ".join(yaml_scalar(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{yaml_scalar(str(k))}: {yaml_scalar(v)}" for k, v in value.items()) + "}"
    text = str(value)
    plain = re.fullmatch(r"[A-Za-z_./][A-Za-z0-9_./-]*", text) and not re.match(r"\.[0-9]", text)  # .5 is a float
    if plain and text.lower() not in YAML_RESOLVED:
        return text
    return yaml_quote(text)


def yaml_text(items: list[tuple[str, Any, str]]) -> str:
    """``key: value  # comment`` lines; a list of dicts is written as a block."""
    lines = []
    for key, value, comment in items:
        tail = f"  # {printable(comment)}" if comment else ""
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            lines.append(f"{key}:{tail}")
            for d in value:
                first = True
                for k, v in d.items():
                    lines.append(f"  {'- ' if first else '  '}{k}: {yaml_scalar(v)}")
                    first = False
        else:
            lines.append(f"{key}: {yaml_scalar(value)}{tail}")
    return "\n".join(lines) + "\n"


#: transformers ``attn_implementation`` names (TRL, axolotl).
HF_ATTN = {"eager": "eager", "sdpa": "sdpa", "flash-attn-2": "flash_attention_2"}
#: transformers ``OptimizerNames`` for each Setup optimizer (TRL, ms-swift, LLaMA-Factory, axolotl).
HF_OPTIM = {
    "adamw": "adamw_torch",
    "adamw-fused": "adamw_torch_fused",
    "adamw-8bit": "adamw_bnb_8bit",
    "paged-adamw-8bit": "paged_adamw_8bit",
    "paged-adamw-32bit": "paged_adamw_32bit",
    "adafactor": "adafactor",
    "sgd": "sgd",
    "lion": "lion_32bit",
}


def single_process_only(target: str, setup: Setup) -> None:
    if setup.parallel not in ("none", "ddp"):
        raise VramplanError(
            "emit",
            f"{target}: launch configs for {setup.parallel} are not emitted yet; plan with --parallel none or ddp",
        )


def integral_alpha(setup: Setup, notes: list[str]) -> Setup:
    """Targets whose lora_alpha is an int: round a fractional alpha and say so."""
    if setup.is_lora and setup.lora_alpha != int(setup.lora_alpha):
        alpha = max(1, round(setup.lora_alpha))
        notes.append(f"lora_alpha {setup.lora_alpha:g} is an integer option here: {alpha}")
        return setup.model_copy(update={"lora_alpha": float(alpha)})
    return setup
