"""Setup: every choice that moves memory, shared by estimating and emitting.

Value names are the same everywhere (CLI flags, Python keywords, tables/measured rows).
"""

from __future__ import annotations

import re
from functools import cache
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from vramplan.errors import VramplanError, shown
from vramplan.limits import (
    MAX_BETA,
    MAX_GENERATIONS,
    MAX_GPUS,
    MAX_GPUS_PER_NODE,
    MAX_GRAD_ACCUM,
    MAX_IMAGE_SIDE,
    MAX_IMAGES,
    MAX_LAYERS,
    MAX_LORA_ALPHA,
    MAX_LORA_RANK,
    MAX_MICRO_BATCH,
    MAX_SEQ_LEN,
    MAX_VIDEO_FRAMES,
)

Method = Literal["full", "freeze", "lora", "qlora", "inference"]
Quant = Literal["none", "bnb-int8", "bnb-nf4", "bnb-nf4-dq", "bnb-fp4", "gptq-int4", "awq-int4"]
Precision = Literal["bf16", "fp16", "fp32", "amp-bf16", "amp-fp16"]
Optimizer = Literal[
    "adamw", "adamw-fused", "adamw-8bit", "paged-adamw-8bit", "paged-adamw-32bit", "adafactor", "sgd", "lion"
]
Attention = Literal["eager", "sdpa", "flash-attn-2"]
Parallel = Literal["none", "ddp", "zero1", "zero2", "zero3", "fsdp", "device_map"]
Offload = Literal["none", "optimizer", "optimizer+params"]
KVCache = Literal["auto", "fp8", "int8", "int4"]
FsdpSharding = Literal["full_shard", "shard_grad_op", "hybrid_shard"]
RL = Literal["none", "grpo"]
VLLM = Literal["none", "colocate"]

METHODS: tuple[str, ...] = get_args(Method)
QUANTS: tuple[str, ...] = get_args(Quant)
PRECISIONS: tuple[str, ...] = get_args(Precision)
OPTIMIZERS: tuple[str, ...] = get_args(Optimizer)
ATTENTIONS: tuple[str, ...] = get_args(Attention)
PARALLELS: tuple[str, ...] = get_args(Parallel)
OFFLOADS: tuple[str, ...] = get_args(Offload)
KV_CACHES: tuple[str, ...] = get_args(KVCache)
FSDP_SHARDINGS: tuple[str, ...] = get_args(FsdpSharding)
RLS: tuple[str, ...] = get_args(RL)
VLLMS: tuple[str, ...] = get_args(VLLM)
TRAINING_METHODS: tuple[str, ...] = tuple(m for m in METHODS if m != "inference")
#: layouts run by DeepSpeed (fp32 master weights and optimizer state, partitioned by stage).
DEEPSPEED = ("zero1", "zero2", "zero3")
QUANTIZED: tuple[str, ...] = tuple(q for q in QUANTS if q != "none")
EXTRA_MODULES = ("embeddings", "lm_head")

_SIZE = re.compile(r"([0-9]{1,9})[xX]([0-9]{1,9})")


def _check_size(field: str, text: str, example: str) -> None:
    """WIDTHxHEIGHT in ASCII digits, each side 1 to MAX_IMAGE_SIDE (``int()`` alone would also
    take full-width digits, underscores and spaces)."""
    m = _SIZE.fullmatch(text)
    if m is None or not all(1 <= int(side) <= MAX_IMAGE_SIDE for side in m.groups()):
        raise ValueError(
            f"{field}|write WIDTHxHEIGHT in pixels, each side 1 to {MAX_IMAGE_SIDE}, like {example}; got {shown(text)}"
        )


class Setup(BaseModel):
    """One fine-tuning configuration. Defaults are a common LoRA run."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    method: Method = "lora"
    quant: Quant = "none"
    precision: Precision = "bf16"
    lora_rank: int = Field(8, ge=1, le=MAX_LORA_RANK)
    lora_alpha: float = Field(16.0, gt=0, le=MAX_LORA_ALPHA, allow_inf_nan=False)
    lora_dropout: float = Field(0.05, ge=0, lt=1, allow_inf_nan=False)
    lora_targets: str = "all-linear"
    trainable_extra: tuple[Literal["embeddings", "lm_head"], ...] = ()
    freeze_trainable_layers: int = Field(2, ge=1, le=MAX_LAYERS)
    optimizer: Optimizer = "adamw"
    seq_len: int = Field(2048, ge=1, le=MAX_SEQ_LEN)
    micro_batch: int = Field(1, ge=1, le=MAX_MICRO_BATCH)
    grad_accum: int = Field(1, ge=1, le=MAX_GRAD_ACCUM)
    grad_checkpointing: bool = True
    attention: Attention = "sdpa"
    num_gpus: int = Field(1, ge=1, le=MAX_GPUS)  # GPUs per node (all of them with one node)
    num_nodes: int = Field(1, ge=1, le=MAX_GPUS)
    parallel: Parallel = "none"
    offload: Offload = "none"
    fsdp_sharding: FsdpSharding = "full_shard"  # FSDP only; hybrid_shard shards within a node
    kv_cache: KVCache = "auto"  # inference: the cache dtype (auto = the run's 16-bit dtype)
    image_size: str = ""  # VLMs: WIDTHxHEIGHT of each image (Qwen-VL: fixed 448x448)
    images_per_sample: int = Field(0, ge=0, le=MAX_IMAGES)
    # VLMs: one video per sample, as the frames the processor samples, each WIDTHxHEIGHT
    video_frames: int = Field(0, ge=0, le=MAX_VIDEO_FRAMES)
    video_size: str = ""
    # VLM full fine-tuning: keep the vision tower and/or its projector (merger) frozen, as
    # LLaMA-Factory's freeze_vision_tower / freeze_multi_modal_projector and ms-swift's
    # freeze_vit / freeze_aligner do; LoRA, QLoRA and freeze leave both frozen anyway
    freeze_vision: bool = False
    freeze_projector: bool = False
    # reinforcement fine-tuning (TRL GRPOTrainer): seq_len is prompt + completion
    rl: RL = "none"
    num_generations: int = Field(8, ge=2, le=MAX_GENERATIONS)
    completion_len: int = Field(512, ge=1, le=MAX_SEQ_LEN)
    beta: float = Field(0.0, ge=0, le=MAX_BETA, allow_inf_nan=False)
    # GRPO generation with vLLM inside the training process (TRL use_vllm, vllm_mode="colocate")
    vllm: VLLM = "none"
    vllm_gpu_memory_utilization: float = Field(0.3, gt=0, lt=1, allow_inf_nan=False)
    vllm_sleep: bool = False  # TRL vllm_enable_sleep_mode: vLLM frees its share outside generation
    vllm_card_bytes: int = Field(0, ge=0)  # the card vLLM takes its share of (the planner sets it)

    @model_validator(mode="after")
    def _combinations(self) -> Setup:
        if self.method == "qlora" and self.quant == "none":
            raise ValueError(
                "quant|method qlora trains LoRA on a quantized base: choose --quant "
                + "|".join(QUANTIZED)
                + ", or use --method lora"
            )
        if self.method not in ("qlora", "inference") and self.quant != "none":
            raise ValueError(
                f"quant|--quant {self.quant} needs --method qlora (LoRA on a quantized base) or inference; "
                f"method {self.method} trains 16/32-bit weights, so use --quant none"
            )
        if self.image_size:
            _check_size("image_size", self.image_size, "1024x768")
        if self.video_size:
            _check_size("video_size", self.video_size, "640x360")
            if not self.video_frames:
                raise ValueError("video_size|--video-size needs --video-frames N (the frames sampled per video)")
        if (self.freeze_vision or self.freeze_projector) and self.method != "full":
            raise ValueError(
                "freeze_vision|--freeze-vision/--freeze-projector apply to --method full: LoRA, QLoRA and freeze"
                " keep the vision tower and projector frozen already"
            )
        if self.video_frames and self.method == "inference":
            raise ValueError("video_frames|videos are planned for fine-tuning; inference counts text tokens")
        if self.images_per_sample and self.method == "inference":
            raise ValueError("images_per_sample|images are planned for fine-tuning; inference counts text tokens")
        if self.kv_cache != "auto" and self.method != "inference":
            raise ValueError("kv_cache|the KV cache dtype applies to --method inference only")
        if self.method == "inference" and self.parallel not in ("none", "device_map"):
            raise ValueError("parallel|inference splits a model with --parallel device_map (or runs on one GPU)")
        if self.method in ("lora", "qlora"):
            names = [t.strip() for t in self.lora_targets.split(",")]
            if not all(names):
                raise ValueError("lora_targets|use 'all-linear' or comma-separated module names like q_proj,v_proj")
        elif self.trainable_extra:
            raise ValueError("trainable_extra|extra trainable modules apply to lora/qlora only")
        if self.num_gpus > 1 and self.parallel == "none":
            raise ValueError(
                "parallel|more than one GPU needs a layout: --parallel " + "|".join(p for p in PARALLELS if p != "none")
            )
        if self.num_nodes > 1:
            if self.num_gpus > MAX_GPUS_PER_NODE:
                raise ValueError(
                    f"num_gpus|with --nodes, --gpus counts the GPUs of one node: at most {MAX_GPUS_PER_NODE}"
                )
            if self.num_gpus * self.num_nodes > MAX_GPUS:
                raise ValueError(f"num_nodes|--gpus x --nodes is at most {MAX_GPUS} GPUs")
            if self.parallel == "device_map":
                raise ValueError(
                    "parallel|device_map splits the layers inside one process on one machine; across nodes use"
                    " --parallel ddp|zero1|zero2|zero3|fsdp"
                )
            if self.parallel == "none":
                raise ValueError("parallel|more than one node needs a layout: --parallel ddp|zero1|zero2|zero3|fsdp")
        if self.rl != "none":
            if self.method == "inference":
                raise ValueError("rl|--rl grpo trains a policy: --method full|freeze|lora|qlora")
            if self.parallel != "none":
                raise ValueError("rl|GRPO is planned on one GPU (--parallel none); several GPUs are not modelled yet")
            if self.video_frames:
                raise ValueError("video_frames|TRL's GRPOTrainer takes image prompts only: drop --video-frames")
            if self.completion_len >= self.seq_len:
                raise ValueError(
                    f"completion_len|--completion-len {self.completion_len} must be below --seq-len {self.seq_len}"
                    " (prompt + completion)"
                )
            if (self.micro_batch * self.grad_accum) % self.num_generations:
                raise ValueError(
                    f"num_generations|TRL generates micro-batch x grad-accum = {self.micro_batch * self.grad_accum}"
                    f" completions per step, which must be a multiple of --num-generations {self.num_generations}"
                )
        if self.vllm != "none":
            if self.rl != "grpo":
                raise ValueError("vllm|vLLM generates completions for --rl grpo only")
            if self.quant == "bnb-int8":
                raise ValueError(
                    "vllm|vLLM has no in-flight 8-bit bitsandbytes (TRL refuses it): --quant bnb-nf4, or drop --vllm"
                )
            if self.quant in ("gptq-int4", "awq-int4"):
                raise ValueError("vllm|TRL hands vLLM bitsandbytes 4-bit or 16-bit weights: --quant bnb-nf4|none")
            if not self.vllm_card_bytes:
                raise ValueError("vllm|vLLM's share is a fraction of the card: plan it on a GPU (--gpu)")
        elif self.vllm_sleep or self.vllm_gpu_memory_utilization != 0.3:
            raise ValueError("vllm|--vllm-memory and --vllm-sleep apply with --vllm colocate")
        if self.fsdp_sharding != "full_shard" and self.parallel != "fsdp":
            raise ValueError(f"fsdp_sharding|--fsdp-sharding {self.fsdp_sharding} applies to --parallel fsdp only")
        if self.fsdp_sharding != "full_shard" and self.offload != "none":
            raise ValueError("fsdp_sharding|FSDP CPU offload runs with full_shard only")
        if self.offload == "optimizer" and self.parallel not in ("zero1", "zero2", "zero3", "fsdp"):
            raise ValueError(
                "offload|optimizer offload runs under DeepSpeed ZeRO or FSDP: --parallel zero1|zero2|zero3|fsdp"
            )
        if self.offload == "optimizer" and self.parallel == "fsdp":
            raise ValueError("offload|FSDP's CPU offload moves the parameters too: --offload optimizer+params")
        if self.offload == "optimizer+params" and self.parallel not in ("zero3", "fsdp"):
            raise ValueError("offload|parameter offload needs sharded parameters: --parallel zero3|fsdp")
        if self.attention == "flash-attn-2" and self.precision == "fp32":
            raise ValueError("attention|flash-attn-2 runs in fp16/bf16 only: use precision bf16, fp16 or amp-*")
        return self

    @property
    def has_media(self) -> bool:
        """Images or a video in each sample (a VLM's vision tower runs)."""
        return bool(self.images_per_sample or self.video_frames)

    @property
    def is_lora(self) -> bool:
        return self.method in ("lora", "qlora")

    @property
    def world_size(self) -> int:
        """Processes (GPUs) in the run: GPUs per node x nodes."""
        return self.num_gpus * self.num_nodes

    @property
    def shard_count(self) -> int:
        """Ranks that sharded state is split over: the world, or one node's GPUs under FSDP's
        hybrid sharding (sharded within a node, replicated across nodes)."""
        if self.parallel == "fsdp" and self.fsdp_sharding == "hybrid_shard":
            return self.num_gpus
        return self.world_size

    @property
    def tokens(self) -> int:
        """Tokens in one micro-batch (b·s)."""
        return self.seq_len * self.micro_batch

    def lora_target_list(self) -> list[str] | None:
        """Target names, or None for all-linear."""
        if self.lora_targets.strip().lower() == "all-linear":
            return None
        return [t.strip() for t in self.lora_targets.split(",")]


def _field_message(err: Any) -> tuple[str, str]:
    loc = err.get("loc") or ()
    msg = str(err.get("msg", "invalid"))
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    if "|" in msg and not loc:
        field, _, text = msg.partition("|")
        return field, text
    field = str(loc[0]) if loc else "setup"
    return field, f"{msg} (got {shown(err.get('input'))})"


@cache
def _field_adapter(name: str) -> TypeAdapter[Any]:
    """One Setup field's type and constraints (its ``Field(ge=..., le=...)``), alone."""
    info = Setup.model_fields[name]
    typ: Any = Annotated[info.annotation, info]
    return TypeAdapter(typ)


def check_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """Each field on its own (name, type, bounds), before any of them is used: a wrong type
    raises VramplanError naming the field, never a TypeError from deep inside. Returns the
    fields as Setup holds them (``"2048"`` -> 2048, ``"embeddings,lm_head"`` -> a tuple)."""
    out: dict[str, Any] = {}
    for name, value in fields.items():
        if not isinstance(name, str) or name not in Setup.model_fields:
            label = name if isinstance(name, str) else shown(name)
            raise VramplanError(label, f"not a setup field; allowed: {', '.join(Setup.model_fields)}")
        if value is None:
            continue
        if isinstance(value, bool) and Setup.model_fields[name].annotation in (int, float):
            raise VramplanError(name, f"must be a number, not {value!r}")
        if name == "trainable_extra" and isinstance(value, str):
            value = tuple(x.strip() for x in value.split(",") if x.strip())
        try:
            out[name] = _field_adapter(name).validate_python(value)
        except ValidationError as exc:
            err = exc.errors()[0]
            raise VramplanError(name, f"{err.get('msg', 'invalid')} (got {shown(value)})") from None
    return out


def make_setup(**fields: Any) -> Setup:
    """Setup from keyword fields; invalid values raise VramplanError naming the field."""
    fields = {k: v for k, v in fields.items() if v is not None}
    if fields.get("image_size") and "images_per_sample" not in fields:
        fields["images_per_sample"] = 1
    if isinstance(fields.get("trainable_extra"), str):
        fields["trainable_extra"] = tuple(x.strip() for x in fields["trainable_extra"].split(",") if x.strip())
    try:
        return Setup(**fields)
    except ValidationError as exc:
        field, text = _field_message(exc.errors()[0])
        raise VramplanError(field, text) from None
