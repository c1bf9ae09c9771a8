"""What every target's renderer shares: the Context it reads, the header and reasons
lines, the model path, option names. The escapers live in :mod:`vramplan.frameworks.files.escape`
(re-exported here), the reasons in :mod:`vramplan.frameworks.files.reasons`, ``emit()`` in
:mod:`vramplan.emit.emitter`."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from vramplan import verdict
from vramplan.frameworks.files.escape import (
    MODULE_NAME,
    YAML_RESOLVED,
    check_module_names,
    check_text,
    comment_block,
    printable,
    py_literal,
    sh_quote,
    yaml_quote,
    yaml_scalar,
    yaml_text,
)
from vramplan.gpus import GPU
from vramplan.memory import Estimate, vision
from vramplan.memory.host import host_terms
from vramplan.memory.policy import with_policy
from vramplan.models import catalog_sources
from vramplan.policy import Policy
from vramplan.setup import Setup
from vramplan.spec import ModelSpec
from vramplan.units import GIB

#: the escapers are re-exported: their old import path (vramplan.frameworks.files.common) keeps working
__all__ = [
    "Context",
    "HF_ATTN",
    "HF_OPTIM",
    "MODULE_NAME",
    "YAML_RESOLVED",
    "check_module_names",
    "check_text",
    "comment_block",
    "gib",
    "header_lines",
    "image_settings",
    "integral_alpha",
    "layout_lines",
    "model_path",
    "printable",
    "py_literal",
    "remote_code_lines",
    "sh_quote",
    "why_lines",
    "yaml_quote",
    "yaml_scalar",
    "yaml_text",
]


class Context(BaseModel):
    """What a target's renderer reads: the model (its ModelSpec), the card, the Setup as the
    target runs it with its trainer's policy and Estimate, and what emit() decided."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)
    model_name: str
    model_path: str
    spec: ModelSpec
    gpu: GPU
    setup: Setup
    policy: Policy
    est: Estimate
    reasons: dict[str, str]
    adjustments: list[str]
    data: str

    @property
    def fits(self) -> bool:
        return verdict.needed(self.est) <= self.gpu.memory_bytes

    @property
    def headroom_bytes(self) -> int:
        return self.gpu.memory_bytes - verdict.needed(self.est)

    @property
    def host_bytes(self) -> int:
        """CPU offload: host RAM per node the plan puts there."""
        return sum(host_terms(self.spec, with_policy(self.setup, self.policy)).values())

    @property
    def images(self) -> dict[str, int] | None:
        """GRPO/SFT image prompts: per_prompt, max_pixels, tokens_per_image (:func:`image_settings`)."""
        return image_settings(self.spec, self.setup)

    @property
    def lm_linears(self) -> list[str]:
        """The language model's linear layers (a VLM's LoRA stays on them)."""
        return sorted({lin.name for lin in self.spec.layer_linears(0) if lin.nn_linear})


def gib(n: int) -> str:
    return f"{n / GIB:.2f} GiB"


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


def header_lines(ctx: Context, target: str) -> list[str]:
    """The comment block every emitted file starts with (no comment marker)."""
    est = ctx.est
    s = ctx.setup
    lines = [
        f"vramplan plan for {target}: {ctx.model_name}"
        + (f" ({ctx.model_path})" if ctx.model_path != ctx.model_name else "")
        + f", {ctx.est.total_params:,} params, on {ctx.gpu.name}"
        f" ({ctx.gpu.memory_mib:,} MiB as the driver reports it)",
        f"estimated peak per GPU ({est.phase}): allocated {gib(est.allocated_bytes)}"
        f" (torch.cuda.max_memory_allocated), reserved {gib(est.reserved_bytes)}"
        f" (max_memory_reserved), device {gib(est.device_bytes)} (nvidia-smi)",
    ]
    if ctx.fits:
        lines.append(f"headroom: {gib(ctx.headroom_bytes)} of the {gib(ctx.gpu.memory_bytes)} torch can use")
    else:
        lines.append(
            f"WILL NOT FIT: needs {gib(est.device_bytes)}, torch can use {gib(ctx.gpu.memory_bytes)} of the card"
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


def remote_code_lines(ctx: Context, how: str) -> list[str]:
    """What a run of a remote-code family executes, for the emitted file's header: the trainer runs
    the model repository's own Python code (``how`` it is told to); vramplan read the config only."""
    lines = [
        f"REMOTE CODE: {ctx.spec.name} is built by the Python files in its model repository (not by"
        " transformers); the trainer runs that code: "
        + how
        + ". Read the repository, or pin its revision, before you run this; vramplan never ran it",
    ]
    if ctx.spec.vision is not None:
        lines.append("text-only training: the vision tower stays frozen and no images are fed")
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


def integral_alpha(setup: Setup, notes: list[str]) -> Setup:
    """Targets whose lora_alpha is an int: round a fractional alpha and say so."""
    if setup.is_lora and setup.lora_alpha != int(setup.lora_alpha):
        alpha = max(1, round(setup.lora_alpha))
        notes.append(f"lora_alpha {setup.lora_alpha:g} is an integer option here: {alpha}")
        return setup.model_copy(update={"lora_alpha": float(alpha)})
    return setup
