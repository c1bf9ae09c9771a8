"""What a trace (or a measurement) can run, decided before torch is imported.

The Setup is the one the planner builds for the model (:func:`vramplan.planner.family_defaults`:
Gemma-2's eager attention, LoRA on an MoE's attention, dropout 0 under MoE all-linear), and
everything the harness cannot build is refused here with one line (exit 2), so no refusal
waits for torch to load. Torch-free: importing this module imports neither torch nor
transformers.
"""

from __future__ import annotations

import importlib.util
import keyword
import os
from typing import Any

from vramplan.arch import family
from vramplan.errors import VramplanError
from vramplan.limits import MAX_STEPS
from vramplan.memory import estimate
from vramplan.memory.trainable import check_lora_targets
from vramplan.models import load_config, load_model
from vramplan.planner import family_defaults
from vramplan.setup import Setup, make_setup
from vramplan.spec import ModelSpec, spec_from_config

TRACE_OPTIMIZERS = ("adamw", "adamw-fused", "sgd", "adafactor", "adamw-8bit")
BNB_QUANTS = ("bnb-nf4", "bnb-nf4-dq", "bnb-fp4", "bnb-int8")


def check_steps(steps: int) -> None:
    if not 1 <= steps <= MAX_STEPS:
        raise VramplanError("steps", f"run 1 to {MAX_STEPS} optimizer steps, got {steps}")


def check_single_process(setup_fields: dict[str, Any], command: str) -> None:
    """The harness runs one process on one device: a multi-GPU layout is refused (the
    planner estimates it per GPU)."""
    layout = setup_fields.get("parallel", "none")
    gpus = setup_fields.get("num_gpus", 1)
    nodes = setup_fields.get("num_nodes", 1)
    if layout != "none" or gpus != 1 or nodes != 1:
        flag = "parallel" if layout != "none" else ("num_gpus" if gpus != 1 else "num_nodes")
        raise VramplanError(
            flag,
            f"{command} runs one process on one device: drop --parallel/--gpus/--nodes (plan a multi-GPU layout"
            " with 'vramplan MODEL --gpus N --parallel ...', which estimates each GPU's share)",
        )


def check_buildable(config: dict[str, Any], setup: Setup, device: str) -> list[str]:
    """Refuse what the harness cannot build, with the reason and what to do instead; the notes
    say where a trace stands in for what a GPU runs."""
    mt = config.get("model_type")
    fam = family(mt)
    if fam is not None and fam.remote_code:  # transformers cannot build it without the publisher's code
        raise VramplanError("model", fam.remote_code)
    # a tower the family counts but plans no activations for (Llama 4): built, fed text batches
    vlm = "vision_config" in config and not _tower_counted_only(config)
    if "visual" in config or (vlm and not _traces_vision(config)):
        raise VramplanError(
            "model", f"tracing {mt} with its vision tower is not supported: Qwen2-VL, Qwen2.5-VL and Qwen3-VL are"
        )
    if vlm and not setup.has_media:
        raise VramplanError(
            "image_size", "a VLM is traced with images or a video: give --image-size WxH or --video-frames N"
        )
    if vlm and setup.images_per_sample and setup.video_frames:
        raise VramplanError("video_frames", "a trace feeds images or a video, not both: trace them separately")
    if not vlm and setup.has_media:
        raise VramplanError("images_per_sample", "images need a VLM (qwen2-vl-*, qwen2.5-vl-*, qwen3-vl-*)")
    if "vision_config" in config and setup.method == "qlora":
        raise VramplanError("method", "the harness traces VLMs in 16/32 bits (lora, full, freeze)")
    if setup.method == "inference":
        raise VramplanError("method", "the harness traces training steps: plan inference with the estimate alone")
    if setup.parallel != "none":
        raise VramplanError(
            "parallel", "the harness runs one process on one device: trace with --parallel none (one GPU's share)"
        )
    notes = []
    if setup.method == "qlora" and setup.quant not in BNB_QUANTS:
        raise VramplanError("quant", f"the harness builds bitsandbytes QLoRA (4-bit and int8), not {setup.quant}")
    needs_bnb = setup.method == "qlora" or setup.optimizer == "adamw-8bit"
    if needs_bnb and importlib.util.find_spec("bitsandbytes") is None:
        raise VramplanError(
            "quant" if setup.method == "qlora" else "optimizer",
            "this setup needs bitsandbytes: pip install 'vramplan[trace]'",
        )
    if device != "cuda" and setup.optimizer not in TRACE_OPTIMIZERS:
        raise VramplanError(
            "optimizer",
            f"{setup.optimizer} runs on CUDA only; off a GPU the harness runs {', '.join(TRACE_OPTIMIZERS)}",
        )
    if setup.attention == "flash-attn-2" and device != "cuda":
        spec = _spec(config)
        if spec is not None and "sdpa" not in spec.attentions:
            raise VramplanError(
                "attention",
                f"flash-attn-2 needs CUDA, and off a GPU the trace stands in sdpa, which transformers refuses for"
                f" {mt}: trace --attention eager, or measure on a GPU",
            )
        notes.append("flash-attn-2 needs CUDA: traced with sdpa, which saves the same tensors (q, k, v, out, lse)")
    spec = _spec(config)
    moe = spec is not None and spec.moe is not None
    if moe and device != "cuda" and (setup.precision != "bf16" or setup.method == "qlora"):
        notes.append(
            "MoE experts outside bf16: traced through transformers' grouped_mm fallback (torch's grouped_mm"
            " kernel takes bf16 only), which saves the same tensors"
        )
    if setup.precision in ("fp16", "amp-fp16") and device != "cuda":
        notes.append("fp16 autocast on the CPU follows the CPU op lists, which differ slightly from CUDA's")
    return notes


def _tower_counted_only(config: dict[str, Any]) -> bool:
    """The family counts the tower's parameters and plans text batches (``ModelSpec.tower_params``)."""
    if family(config.get("model_type")) is None:
        return False
    spec = _spec(config)
    return spec is not None and spec.vision is None and spec.tower_params > 0


def _traces_vision(config: dict[str, Any]) -> bool:
    """The harness builds the vision tower: a registered family reads it into a spec with a vision
    tower from transformers' own modules (Qwen2-VL, Qwen2.5-VL). A config its family cannot read
    passes here: the reader's own error is raised where the spec is read."""
    if family(config.get("model_type")) is None:
        return False
    spec = _spec(config)
    return spec is None or (spec.vision is not None and bool(spec.transformers_module))


def _spec(config: dict[str, Any]) -> ModelSpec | None:
    try:
        return spec_from_config(config, name="model", where="model config.json")
    except VramplanError:
        return None  # the spec's own error is raised where the spec is read


def config_kwargs(config: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The config's keys fit to hand transformers' config constructors, and the keys left out.

    ``PretrainedConfig.__init__`` (transformers configuration_utils.py) sets every unknown
    keyword with ``setattr(self, key, value)``: ``__class__`` raises TypeError ("__class__ must
    be set to a class"), ``__dict__`` replaces the instance's attributes (AttributeError on
    ``_output_attentions`` next), and a key named like a method (``to_dict``) silently shadows
    it. So dunder, private (``_``) and non-identifier keys are left out at the top level and in
    each ``*_config`` sub-config, dunder keys in every nested mapping, and ``model_type`` and
    ``auto_map`` (remote code is never followed) at the top."""
    dropped: list[str] = []

    def clean(d: dict[str, Any], where: str, strict: bool) -> dict[str, Any]:
        out = {}
        for k, v in d.items():
            name = str(k)
            bad = name.startswith("__") or (
                strict and (not name.isidentifier() or keyword.iskeyword(name) or name.startswith("_"))
            )
            if bad:
                dropped.append(f"{where}{name}")
                continue
            if isinstance(v, dict):
                v = clean(v, f"{where}{name}.", strict=name.endswith("_config"))
            out[k] = v
        return out

    kept = clean(config, "", strict=True)
    kept.pop("model_type", None)
    kept.pop("auto_map", None)
    return kept, dropped


def resolve_setup(model: str, fields: dict[str, Any], *, command: str = "trace") -> tuple[Setup, list[str]]:
    """The Setup a trace of ``model`` runs for the flags in ``fields`` (None = not given): the
    planner's family defaults filled in, checked by the estimate's own rules, refused with
    one line if the harness cannot build it. Returns the Setup and the notes that explain
    the defaults it took (the build adds its own notes)."""
    fields = {k: v for k, v in fields.items() if v is not None}
    if fields.get("rl", "none") != "none":
        raise VramplanError(
            "rl", f"{command} runs supervised steps; GRPO is planned analytically (vramplan MODEL --rl grpo)"
        )
    check_single_process(fields, command)
    if fields.get("method") == "qlora" and "quant" not in fields:
        fields["quant"] = "bnb-nf4"
    if fields.get("quant") not in (None, "none") and "method" not in fields:
        fields["method"] = "qlora"
    _, config = load_config(model)
    spec: ModelSpec = load_model(model)
    fields, notes = family_defaults(spec, fields)
    setup = make_setup(**fields)
    check_lora_targets(spec, setup)
    check_buildable(config, setup, "cuda" if command == "measure" else "cpu")
    return setup, [note.text for note in notes]


def refuse_if_too_big(model: str, setup: Setup) -> None:
    """A real CPU run of a model that would not fit this machine is refused up front, from
    the estimate (allocated tier), against the RAM available now."""
    need = estimate(load_model(model), setup).allocated_bytes
    try:
        avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return
    if need > 0.8 * avail:
        raise VramplanError(
            "model",
            f"a real CPU run needs about {need / 2**30:.1f} GiB, more than this machine can give "
            f"({avail / 2**30:.1f} GiB free): trace it with fake tensors instead (drop --real-cpu)",
        )
