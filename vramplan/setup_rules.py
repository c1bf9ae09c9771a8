"""Every rule that ties Setup's fields together, in one list, in the order they are checked.

Each rule names the field the refusal is about (``vramplan: error: <field>: <message>``) and
returns its message when the setup breaks it, else None. ``Setup``'s validator runs
:data:`RULES` in order and refuses on the first one broken; the planner runs
:data:`GPU_RULES` against the card (they read only the fields the caller pinned: an unpinned
precision is chosen for the card instead); the plan command runs :data:`RUN_RULES` on its
flags, the run's length (``--samples``, ``--dataset-tokens``, ...) beside the Setup fields. A
new rule is one function with ``@rule(field)`` (``@gpu_rule``, ``@run_rule``).

Left where they are: the rules that need the model (``planner.plan``: a frozen vision tower
needs one) or only say what was pinned (``planner.plan``: GRPO's options without ``--rl``),
and what the trace harness cannot build (``trace/preflight.py``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from vramplan.choices import PARALLELS, QUANTIZED
from vramplan.errors import VramplanError, shown
from vramplan.limits import MAX_GPUS, MAX_GPUS_PER_NODE, MAX_IMAGE_SIDE

if TYPE_CHECKING:
    from vramplan.gpus import GPU
    from vramplan.setup import GrpoView, LayoutView, LoraView, MediaView, Setup


class Views(NamedTuple):
    """A setup's grouped views (``Setup.lora``, ``.layout``, ``.media``, ``.grpo``), made once for
    all the rules."""

    lora: LoraView
    layout: LayoutView
    media: MediaView
    grpo: GrpoView

    @classmethod
    def of(cls, setup: Setup) -> Views:
        return cls(setup.lora, setup.layout, setup.media, setup.grpo)


#: a rule's check: the setup and its views -> the message, or None
Check = Callable[["Setup", Views], "str | None"]
#: a card rule's check: the pinned fields and the card -> the message, or None
GpuCheck = Callable[[Mapping[str, Any], "GPU"], "str | None"]
#: a run rule's check: the plan command's flags -> the message, or None
RunCheck = Callable[[Mapping[str, Any]], "str | None"]


@dataclass(frozen=True)
class Rule:
    """One combination rule: its name, the field it refuses, and its check (the message, or None)."""

    name: str
    field: str
    check: Check

    def broken(self, setup: Setup, views: Views | None = None) -> str | None:
        """``field|message`` when ``setup`` breaks the rule (the form pydantic's validator carries)."""
        message = self.check(setup, views or Views.of(setup))
        return None if message is None else f"{self.field}|{message}"


@dataclass(frozen=True)
class RunRule:
    """A rule between the plan command's run-length flags and the Setup fields beside them."""

    name: str
    field: str
    check: RunCheck


@dataclass(frozen=True)
class GpuRule:
    """A rule between the pinned fields and the card they run on."""

    name: str
    field: str
    check: GpuCheck


#: the rules Setup's validator runs, in order
RULES: list[Rule] = []
#: the rules the planner runs against the card
GPU_RULES: list[GpuRule] = []
#: the rules the plan command runs on its flags (a flag not given is None)
RUN_RULES: list[RunRule] = []


def rule(field: str) -> Callable[[Check], Check]:
    """Adds the decorated check to :data:`RULES`, refusing ``field``."""

    def add(check: Check) -> Check:
        RULES.append(Rule(check.__name__, field, check))
        return check

    return add


def gpu_rule(field: str) -> Callable[[GpuCheck], GpuCheck]:
    """Adds the decorated check to :data:`GPU_RULES`, refusing ``field``."""

    def add(check: GpuCheck) -> GpuCheck:
        GPU_RULES.append(GpuRule(check.__name__, field, check))
        return check

    return add


def run_rule(field: str) -> Callable[[RunCheck], RunCheck]:
    """Adds the decorated check to :data:`RUN_RULES`, refusing ``field``."""

    def add(check: RunCheck) -> RunCheck:
        RUN_RULES.append(RunRule(check.__name__, field, check))
        return check

    return add


def first_broken(setup: Setup) -> str | None:
    """``field|message`` of the first rule ``setup`` breaks, or None."""
    views = Views.of(setup)
    for r in RULES:
        broken = r.broken(setup, views)
        if broken is not None:
            return broken
    return None


def check_run_options(options: Mapping[str, Any]) -> None:
    """Refuses the first of :data:`RUN_RULES` the plan command's flags break (VramplanError)."""
    for r in RUN_RULES:
        message = r.check(options)
        if message is not None:
            raise VramplanError(r.field, message)


def check_against_gpu(fields: Mapping[str, Any], gpu: GPU) -> None:
    """Refuses pinned fields the card cannot run (VramplanError naming the field)."""
    for r in GPU_RULES:
        message = r.check(fields, gpu)
        if message is not None:
            raise VramplanError(r.field, message)


_SIZE = re.compile(r"([0-9]{1,9})[xX]([0-9]{1,9})")


def size_problem(text: str, example: str) -> str | None:
    """WIDTHxHEIGHT in ASCII digits, each side 1 to MAX_IMAGE_SIDE (``int()`` alone would also
    take full-width digits, underscores and spaces)."""
    m = _SIZE.fullmatch(text)
    if m is None or not all(1 <= int(side) <= MAX_IMAGE_SIDE for side in m.groups()):
        return f"write WIDTHxHEIGHT in pixels, each side 1 to {MAX_IMAGE_SIDE}, like {example}; got {shown(text)}"
    return None


# --- method and quantization


@rule("quant")
def qlora_needs_quant(s: Setup, v: Views) -> str | None:
    if s.method == "qlora" and s.quant == "none":
        return (
            "method qlora trains LoRA on a quantized base: choose --quant "
            + "|".join(QUANTIZED)
            + ", or use --method lora"
        )
    return None


@rule("quant")
def quant_needs_qlora(s: Setup, v: Views) -> str | None:
    if s.method not in ("qlora", "inference") and s.quant != "none":
        return (
            f"--quant {s.quant} needs --method qlora (LoRA on a quantized base) or inference; "
            f"method {s.method} trains 16/32-bit weights, so use --quant none"
        )
    return None


# --- images and videos


@rule("image_size")
def image_size_is_a_size(s: Setup, v: Views) -> str | None:
    return size_problem(s.image_size, "1024x768") if s.image_size else None


@rule("video_size")
def video_size_is_a_size(s: Setup, v: Views) -> str | None:
    return size_problem(s.video_size, "640x360") if s.video_size else None


@rule("video_size")
def video_size_needs_frames(s: Setup, v: Views) -> str | None:
    if s.video_size and not s.video_frames:
        return "--video-size needs --video-frames N (the frames sampled per video)"
    return None


@rule("freeze_vision")
def freezing_parts_needs_full(s: Setup, v: Views) -> str | None:
    if (s.freeze_vision or s.freeze_projector) and s.method != "full":
        return (
            "--freeze-vision/--freeze-projector apply to --method full: LoRA, QLoRA and freeze"
            " keep the vision tower and projector frozen already"
        )
    return None


@rule("video_frames")
def videos_are_for_training(s: Setup, v: Views) -> str | None:
    if v.media.video_frames and s.method == "inference":
        return "videos are planned for fine-tuning; inference counts text tokens"
    return None


@rule("images_per_sample")
def images_are_for_training(s: Setup, v: Views) -> str | None:
    if v.media.images and s.method == "inference":
        return "images are planned for fine-tuning; inference counts text tokens"
    return None


# --- inference


@rule("kv_cache")
def kv_cache_is_for_inference(s: Setup, v: Views) -> str | None:
    if s.kv_cache != "auto" and s.method != "inference":
        return "the KV cache dtype applies to --method inference only"
    return None


@rule("parallel")
def inference_splits_by_device_map(s: Setup, v: Views) -> str | None:
    if s.method == "inference" and v.layout.parallel not in ("none", "device_map"):
        return "inference splits a model with --parallel device_map (or runs on one GPU)"
    return None


# --- LoRA


@rule("lora_targets")
def lora_targets_are_names(s: Setup, v: Views) -> str | None:
    if v.lora.on and not all(t.strip() for t in v.lora.targets.split(",")):
        return "use 'all-linear' or comma-separated module names like q_proj,v_proj"
    return None


@rule("trainable_extra")
def extra_modules_are_for_lora(s: Setup, v: Views) -> str | None:
    if not v.lora.on and v.lora.extra:
        return "extra trainable modules apply to lora/qlora only"
    return None


# --- GPUs, nodes and layouts


@rule("parallel")
def gpus_need_a_layout(s: Setup, v: Views) -> str | None:
    if v.layout.gpus > 1 and v.layout.parallel == "none":
        return "more than one GPU needs a layout: --parallel " + "|".join(p for p in PARALLELS if p != "none")
    return None


@rule("num_gpus")
def nodes_count_gpus_per_node(s: Setup, v: Views) -> str | None:
    if v.layout.nodes > 1 and v.layout.gpus > MAX_GPUS_PER_NODE:
        return f"with --nodes, --gpus counts the GPUs of one node: at most {MAX_GPUS_PER_NODE}"
    return None


@rule("num_nodes")
def nodes_within_the_gpu_bound(s: Setup, v: Views) -> str | None:
    if v.layout.nodes > 1 and v.layout.world > MAX_GPUS:
        return f"--gpus x --nodes is at most {MAX_GPUS} GPUs"
    return None


@rule("parallel")
def device_map_is_one_machine(s: Setup, v: Views) -> str | None:
    if v.layout.nodes > 1 and v.layout.parallel == "device_map":
        return (
            "device_map splits the layers inside one process on one machine; across nodes use"
            " --parallel ddp|zero1|zero2|zero3|fsdp"
        )
    return None


@rule("parallel")
def nodes_need_a_layout(s: Setup, v: Views) -> str | None:
    if v.layout.nodes > 1 and v.layout.parallel == "none":
        return "more than one node needs a layout: --parallel ddp|zero1|zero2|zero3|fsdp"
    return None


@rule("deepspeed_config")
def deepspeed_config_matches_layout(s: Setup, v: Views) -> str | None:
    """A ds_config.json (``--deepspeed``) is planned under the layout and offload it says."""
    cfg = s.deepspeed_config
    if cfg is None:
        return None
    want = f"zero{cfg.stage}"
    if v.layout.parallel != want:
        return f"{cfg.source} is ZeRO stage {cfg.stage}: plan it with --parallel {want}"
    offload = "optimizer+params" if cfg.offload_param else "optimizer" if cfg.offload_optimizer else "none"
    if v.layout.offload != offload:
        return f"{cfg.source} offloads {offload}: plan it with --offload {offload}"
    return None


# --- GRPO and vLLM


@rule("rl")
def grpo_trains(s: Setup, v: Views) -> str | None:
    if v.grpo.on and s.method == "inference":
        return "--rl grpo trains a policy: --method full|freeze|lora|qlora"
    return None


@rule("rl")
def grpo_on_one_gpu(s: Setup, v: Views) -> str | None:
    if v.grpo.on and v.layout.parallel != "none":
        return "GRPO is planned on one GPU (--parallel none); several GPUs are not modelled yet"
    return None


@rule("video_frames")
def grpo_takes_images_only(s: Setup, v: Views) -> str | None:
    if v.grpo.on and v.media.video_frames:
        return "TRL's GRPOTrainer takes image prompts only: drop --video-frames"
    return None


@rule("completion_len")
def completion_within_sequence(s: Setup, v: Views) -> str | None:
    if v.grpo.on and v.grpo.completion_len >= s.seq_len:
        return f"--completion-len {v.grpo.completion_len} must be below --seq-len {s.seq_len} (prompt + completion)"
    return None


@rule("num_generations")
def batch_holds_whole_groups(s: Setup, v: Views) -> str | None:
    if v.grpo.on and (s.micro_batch * s.grad_accum) % v.grpo.generations:
        return (
            f"TRL generates micro-batch x grad-accum = {s.micro_batch * s.grad_accum}"
            f" completions per step, which must be a multiple of --num-generations {v.grpo.generations}"
        )
    return None


@rule("vllm")
def vllm_is_for_grpo(s: Setup, v: Views) -> str | None:
    if v.grpo.vllm and not v.grpo.on:
        return "vLLM generates completions for --rl grpo only"
    return None


@rule("vllm")
def vllm_has_no_int8(s: Setup, v: Views) -> str | None:
    if v.grpo.vllm and s.quant == "bnb-int8":
        return "vLLM has no in-flight 8-bit bitsandbytes (TRL refuses it): --quant bnb-nf4, or drop --vllm"
    return None


@rule("vllm")
def vllm_takes_bnb_or_16_bit(s: Setup, v: Views) -> str | None:
    if v.grpo.vllm and s.quant in ("gptq-int4", "awq-int4"):
        return "TRL hands vLLM bitsandbytes 4-bit or 16-bit weights: --quant bnb-nf4|none"
    return None


@rule("vllm")
def vllm_options_need_vllm(s: Setup, v: Views) -> str | None:
    if not v.grpo.vllm and (v.grpo.vllm_sleep or v.grpo.vllm_memory != 0.3):
        return "--vllm-memory and --vllm-sleep apply with --vllm colocate"
    return None


# --- sharding and offload


@rule("fsdp_sharding")
def sharding_is_for_fsdp(s: Setup, v: Views) -> str | None:
    if v.layout.fsdp_sharding != "full_shard" and v.layout.parallel != "fsdp":
        return f"--fsdp-sharding {v.layout.fsdp_sharding} applies to --parallel fsdp only"
    return None


@rule("fsdp_sharding")
def fsdp_offload_is_full_shard(s: Setup, v: Views) -> str | None:
    if v.layout.fsdp_sharding != "full_shard" and v.layout.offload != "none":
        return "FSDP CPU offload runs with full_shard only"
    return None


@rule("offload")
def optimizer_offload_needs_zero_or_fsdp(s: Setup, v: Views) -> str | None:
    if v.layout.offload == "optimizer" and v.layout.parallel not in ("zero1", "zero2", "zero3", "fsdp"):
        return "optimizer offload runs under DeepSpeed ZeRO or FSDP: --parallel zero1|zero2|zero3|fsdp"
    return None


@rule("offload")
def fsdp_offloads_parameters_too(s: Setup, v: Views) -> str | None:
    if v.layout.offload == "optimizer" and v.layout.parallel == "fsdp":
        return "FSDP's CPU offload moves the parameters too: --offload optimizer+params"
    return None


@rule("offload")
def parameter_offload_needs_sharding(s: Setup, v: Views) -> str | None:
    if v.layout.offload == "optimizer+params" and v.layout.parallel not in ("zero3", "fsdp"):
        return "parameter offload needs sharded parameters: --parallel zero3|fsdp"
    return None


# --- precision and attention


@rule("avg_tokens")
def one_length_source(s: Setup, v: Views) -> str | None:
    if s.avg_tokens and s.lengths_file is not None:
        return "give --avg-tokens or --lengths-file, not both (the file gives the mean)"
    return None


@rule("attention")
def flash_attention_is_16_bit(s: Setup, v: Views) -> str | None:
    if s.attention == "flash-attn-2" and s.precision == "fp32":
        return "flash-attn-2 runs in fp16/bf16 only: use precision bf16, fp16 or amp-*"
    return None


@gpu_rule("precision")
def card_runs_bf16(fields: Mapping[str, Any], gpu: GPU) -> str | None:
    if fields.get("precision") in ("bf16", "amp-bf16") and not gpu.bf16_supported:
        return f"{gpu.name} has no bf16: use fp16 or amp-fp16"
    return None


@gpu_rule("attention")
def card_runs_flash_attention(fields: Mapping[str, Any], gpu: GPU) -> str | None:
    if fields.get("attention") == "flash-attn-2" and not gpu.flash_attn2_supported:
        return f"{gpu.name} does not run FlashAttention-2: use sdpa or eager"
    return None


# --- the run's length (the plan command's time and cost)


@run_rule("samples")
def samples_need_their_length(o: Mapping[str, Any]) -> str | None:
    if o.get("samples") is not None and o.get("avg_tokens") is None and o.get("lengths_file") is None:
        return "--samples goes with --avg-tokens or --lengths-file (the wall time needs their length)"
    return None


@run_rule("dataset_tokens")
def one_run_length(o: Mapping[str, Any]) -> str | None:
    if o.get("dataset_tokens") is not None and o.get("samples") is not None:
        return "give --dataset-tokens or --samples with --avg-tokens, not both"
    return None


@run_rule("samples")
def no_time_for_grpo(o: Mapping[str, Any]) -> str | None:
    timed = o.get("samples") is not None or o.get("dataset_tokens") is not None
    if o.get("rl") not in (None, "none") and timed:
        return "the time model does not cover GRPO's generation yet: drop --samples/--dataset-tokens"
    return None


@run_rule("price_per_hour")
def cost_needs_the_length(o: Mapping[str, Any]) -> str | None:
    if o.get("price_per_hour") is not None and o.get("samples") is None and o.get("dataset_tokens") is None:
        return "the cost needs the run's length: add --dataset-tokens or --samples"
    return None
