"""Setup: every choice that moves memory, shared by estimating and emitting.

Value names are the same everywhere (CLI flags, Python keywords, tables/measured rows).
"""

from __future__ import annotations

from functools import cache
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from vramplan import length_file, setup_rules, zero_config
from vramplan.choices import (
    ATTENTIONS,
    DEEPSPEED,
    EXTRA_MODULES,
    FSDP_SHARDINGS,
    KV_CACHES,
    METHODS,
    OFFLOADS,
    OPTIMIZERS,
    PARALLELS,
    PRECISIONS,
    QUANTIZED,
    QUANTS,
    RL,
    RLS,
    TRAINING_METHODS,
    VLLM,
    VLLMS,
    Attention,
    FsdpSharding,
    KVCache,
    Method,
    Offload,
    Optimizer,
    Parallel,
    Precision,
    Quant,
)
from vramplan.errors import VramplanError, shown
from vramplan.limits import (
    MAX_BETA,
    MAX_GENERATIONS,
    MAX_GPUS,
    MAX_GRAD_ACCUM,
    MAX_IMAGES,
    MAX_LAYERS,
    MAX_LORA_ALPHA,
    MAX_LORA_RANK,
    MAX_MICRO_BATCH,
    MAX_SEQ_LEN,
    MAX_VIDEO_FRAMES,
)

#: the value names (vramplan.choices) are re-exported: code imports them from here
__all__ = [
    "ATTENTIONS",
    "Attention",
    "DEEPSPEED",
    "EXTRA_MODULES",
    "FSDP_SHARDINGS",
    "FsdpSharding",
    "GrpoView",
    "KVCache",
    "KV_CACHES",
    "LayoutView",
    "LoraView",
    "METHODS",
    "MediaView",
    "Method",
    "OFFLOADS",
    "OPTIMIZERS",
    "Offload",
    "Optimizer",
    "PARALLELS",
    "PRECISIONS",
    "Parallel",
    "Precision",
    "QUANTIZED",
    "QUANTS",
    "RETIRED_FIELDS",
    "Quant",
    "RL",
    "RLS",
    "Setup",
    "TRAINING_METHODS",
    "VLLM",
    "VLLMS",
    "check_fields",
    "make_setup",
    "recorded_setup",
]


class LoraView(NamedTuple):
    """The LoRA fields of a Setup (``setup.lora``)."""

    on: bool  # method lora or qlora
    rank: int
    alpha: float
    dropout: float
    targets: str
    extra: tuple[str, ...]


class LayoutView(NamedTuple):
    """Where the run goes (``setup.layout``): GPUs, nodes, the multi-GPU layout and offload."""

    gpus: int  # per node
    nodes: int
    parallel: str
    offload: str
    fsdp_sharding: str
    world: int  # processes (GPUs) in the run
    shards: int  # ranks sharded state is split over


class MediaView(NamedTuple):
    """A VLM sample's images and video (``setup.media``), and which vision parts stay frozen."""

    images: int
    image_size: str
    video_frames: int
    video_size: str
    freeze_vision: bool
    freeze_projector: bool

    @property
    def any(self) -> bool:
        """Images or a video in each sample (a VLM's vision tower runs)."""
        return bool(self.images or self.video_frames)


class GrpoView(NamedTuple):
    """Reinforcement fine-tuning (``setup.grpo``): TRL GRPOTrainer and its colocated vLLM."""

    on: bool  # rl grpo
    generations: int
    completion_len: int
    beta: float
    vllm: bool  # vllm colocate
    vllm_memory: float  # the card's fraction vLLM takes
    vllm_sleep: bool


#: a field the planner chooses when the caller leaves it out
_SEARCHED: dict[str, Any] = {"searched": True}


class Setup(BaseModel):
    """One fine-tuning configuration. Defaults are a common LoRA run."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # Each field is a flag of the plan, trace and measure commands (cli_parse.py): ``--field-name``
    # unless ``json_schema_extra`` names another ``flag`` (or ``metavar``); its help line is the
    # description, then its default: the planner's choice for a ``searched`` field, else the
    # field's default (or ``shown_default``, what an empty value stands for); ``auto``: the flag
    # also takes "auto".
    method: Method = Field("lora", description="how the weights train (or inference)", json_schema_extra=_SEARCHED)
    quant: Quant = Field("none", description="quantized base weights (qlora, inference)", json_schema_extra=_SEARCHED)
    precision: Precision = Field(
        "bf16", description="weights' dtype; amp-* keeps fp32 weights under autocast", json_schema_extra=_SEARCHED
    )
    lora_rank: int = Field(8, ge=1, le=MAX_LORA_RANK, description="LoRA: rank r of each adapter")
    lora_alpha: float = Field(16.0, gt=0, le=MAX_LORA_ALPHA, allow_inf_nan=False, description="LoRA: scale alpha")
    lora_dropout: float = Field(0.05, ge=0, lt=1, allow_inf_nan=False, description="LoRA: dropout on the input")
    lora_targets: str = Field("all-linear", description="all-linear or comma-separated module names")
    trainable_extra: tuple[Literal["embeddings", "lm_head"], ...] = Field(
        (), description="comma-separated: embeddings,lm_head"
    )
    freeze_trainable_layers: int = Field(
        2, ge=1, le=MAX_LAYERS, description="freeze: the top layers that train (the rest stay frozen)"
    )
    optimizer: Optimizer = Field("adamw", description="optimizer, and how its state is kept")
    seq_len: int = Field(2048, ge=1, le=MAX_SEQ_LEN, description="tokens per sequence")
    micro_batch: int = Field(
        1, ge=1, le=MAX_MICRO_BATCH, description="sequences per GPU per forward", json_schema_extra=_SEARCHED
    )
    grad_accum: int = Field(1, ge=1, le=MAX_GRAD_ACCUM, description="micro-batches per optimizer step")
    grad_checkpointing: bool = Field(
        True, description="recompute each layer's activations in backward", json_schema_extra=_SEARCHED
    )
    attention: Attention = Field(
        "sdpa", description="attention kernel (the family's own when it refuses sdpa)", json_schema_extra=_SEARCHED
    )
    num_gpus: int = Field(
        1,
        ge=1,
        le=MAX_GPUS,
        description="GPUs in the run (per node with --nodes), or auto: the fewest that fit",
        json_schema_extra={"flag": "--gpus", "metavar": "N|auto", "auto": True},
    )
    num_nodes: int = Field(
        1,
        ge=1,
        le=MAX_GPUS,
        description="machines in the run, --gpus each",
        json_schema_extra={"flag": "--nodes", "metavar": "N"},
    )
    parallel: Parallel = Field(
        "none", description="multi-GPU layout (estimates are per GPU)", json_schema_extra=_SEARCHED
    )
    offload: Offload = Field("none", description="CPU offload under ZeRO/FSDP")
    fsdp_sharding: FsdpSharding = Field(
        "full_shard", description="FSDP: what is sharded; hybrid_shard shards within a node"
    )
    kv_cache: KVCache = Field("auto", description="inference: KV cache dtype (auto = the run dtype)")
    image_size: str = Field(
        "", description="VLMs: WIDTHxHEIGHT of each image (implies one image per sample; Qwen-VL: fixed 448x448)"
    )
    images_per_sample: int = Field(0, ge=0, le=MAX_IMAGES, description="VLMs: images in each training sample")
    # VLMs: one video per sample, as the frames the processor samples, each WIDTHxHEIGHT
    video_frames: int = Field(
        0, ge=0, le=MAX_VIDEO_FRAMES, description="VLMs: frames sampled from the one video in each sample"
    )
    video_size: str = Field(
        "", description="VLMs: WIDTHxHEIGHT of the video's frames", json_schema_extra={"shown_default": "448x448"}
    )
    # VLM full fine-tuning: keep the vision tower and/or its projector (merger) frozen, as
    # LLaMA-Factory's freeze_vision_tower / freeze_multi_modal_projector and ms-swift's
    # freeze_vit / freeze_aligner do; LoRA, QLoRA and freeze leave both frozen anyway
    freeze_vision: bool = Field(False, description="VLM full: keep the tower frozen")
    freeze_projector: bool = Field(False, description="VLM full: keep the projector (merger) frozen")
    rl: RL = Field("none", description="reinforcement fine-tuning (TRL GRPOTrainer); --seq-len is prompt + completion")
    num_generations: int = Field(8, ge=2, le=MAX_GENERATIONS, description="GRPO: completions per prompt (as TRL)")
    completion_len: int = Field(512, ge=1, le=MAX_SEQ_LEN, description="GRPO: max completion tokens (as TRL)")
    beta: float = Field(
        0.0,
        ge=0,
        le=MAX_BETA,
        allow_inf_nan=False,
        description="GRPO: KL weight; above 0 a reference model runs (as TRL)",
    )
    vllm: VLLM = Field(
        "none", description="GRPO: generate with vLLM inside the training process (TRL use_vllm, colocate)"
    )
    vllm_gpu_memory_utilization: float = Field(
        0.3,
        gt=0,
        lt=1,
        allow_inf_nan=False,
        description="GRPO + vLLM: the card's fraction vLLM takes (TRL vllm_gpu_memory_utilization)",
        json_schema_extra={"flag": "--vllm-memory", "metavar": "FRACTION"},
    )
    vllm_sleep: bool = Field(
        False, description="GRPO + vLLM: free vLLM's share outside generation (TRL vllm_enable_sleep_mode)"
    )
    # The phases of a run beyond the step (vramplan/memory/run.py): load, evaluation, saving; each
    # default is the trainer's own (its policy), a value overrides it
    zero3_init: Literal["auto", "on", "off"] = Field(
        "auto",
        description="ZeRO-3: partition while loading (deepspeed.zero.Init); off: every rank loads the whole"
        " model first (accelerate zero3_init_flag false); auto: as the trainer launches",
    )
    evaluation: Literal["auto", "none", "loss", "logits", "generate"] = Field(
        "auto",
        description="evaluation during training: none, loss only, logits kept for metrics, or generation"
        " (predict_with_generate); auto: the trainer's default",
    )
    eval_batch: int = Field(
        0,
        ge=0,
        le=MAX_MICRO_BATCH,
        description="sequences per GPU per evaluation forward (per_device_eval_batch_size); 0: the trainer's",
    )
    eval_samples: int = Field(
        0,
        ge=0,
        le=2**31,
        description="evaluation set size: with --evaluation logits every batch's logits stay on the card until"
        " eval_accumulation_steps; 0: two batches' worth",
    )
    # --- DeepSpeed as configured (zero_config.py): the user's ds_config.json
    deepspeed_config: Annotated[zero_config.ZeroConfig | None, BeforeValidator(zero_config.load)] = Field(
        None,
        description="ZeRO: the ds_config.json the run uses (its buckets, overlap_comm, stage-3 limits)",
        json_schema_extra={
            "flag": "--deepspeed",
            "metavar": "FILE",
            "shown_default": "the trainer's shipped config for --parallel",
        },
    )

    # --- batch lengths and the caching allocator (memory/lengths.py)
    lengths: Literal["fixed", "packed", "variable"] = Field(
        "fixed",
        description="batch lengths: fixed (every sample at --seq-len), packed, or variable (padded to each"
        " batch's longest: the allocator caches more, nvidia-smi reads more)",
    )
    avg_tokens: int = Field(
        0,
        ge=0,
        le=MAX_SEQ_LEN,
        description="average tokens per sample: with --lengths variable, the lengths' mean (up to --seq-len);"
        " with --samples, the wall time",
        json_schema_extra={"shown_default": "--seq-len / 2 for variable lengths"},
    )
    lengths_file: Annotated[length_file.LengthDistribution | None, BeforeValidator(length_file.load)] = Field(
        None,
        description="the samples' token counts (one a line, a CSV column, or JSON Lines with input_ids or"
        " length): their distribution sizes the variable lengths' cache (--lengths variable unless given), their"
        " count and mean the wall time",
        json_schema_extra={"metavar": "FILE"},
    )

    @model_validator(mode="before")
    @classmethod
    def _lengths_from_file(cls, data: Any) -> Any:
        """A lengths file without ``lengths``: batches padded to their longest (``variable``), the
        one setting the file's distribution describes."""
        if isinstance(data, dict) and data.get("lengths_file") is not None and data.get("lengths") is None:
            return {**data, "lengths": "variable"}
        return data

    @model_validator(mode="after")
    def _combinations(self) -> Setup:
        """The combination rules (setup_rules.RULES), in order: the first one broken refuses."""
        broken = setup_rules.first_broken(self)
        if broken is not None:
            raise ValueError(broken)
        return self

    @property
    def lora(self) -> LoraView:
        """The LoRA fields, read-only."""
        return LoraView(
            self.is_lora, self.lora_rank, self.lora_alpha, self.lora_dropout, self.lora_targets, self.trainable_extra
        )

    @property
    def layout(self) -> LayoutView:
        """GPUs, nodes, layout and offload, with the world and shard counts, read-only."""
        return LayoutView(
            self.num_gpus,
            self.num_nodes,
            self.parallel,
            self.offload,
            self.fsdp_sharding,
            self.world_size,
            self.shard_count,
        )

    @property
    def media(self) -> MediaView:
        """Images and video, and the frozen vision parts, read-only."""
        return MediaView(
            self.images_per_sample,
            self.image_size,
            self.video_frames,
            self.video_size,
            self.freeze_vision,
            self.freeze_projector,
        )

    @property
    def grpo(self) -> GrpoView:
        """GRPO and its colocated vLLM, read-only."""
        return GrpoView(
            self.rl == "grpo",
            self.num_generations,
            self.completion_len,
            self.beta,
            self.vllm == "colocate",
            self.vllm_gpu_memory_utilization,
            self.vllm_sleep,
        )

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


#: fields Setup no longer has, left out of a recorded row's setup (tables/measured) when it is read:
#: vllm_card_bytes is the card's memory, a GPU fact (``estimate(..., card_bytes=)``)
RETIRED_FIELDS = ("vllm_card_bytes",)


def recorded_setup(fields: dict[str, Any]) -> Setup:
    """The Setup of a recorded row (its fields Setup no longer has left out); pydantic's
    ValidationError when it is not one."""
    return Setup.model_validate({k: v for k, v in fields.items() if k not in RETIRED_FIELDS})


def _field_message(err: Any) -> tuple[str, str]:
    cause = (err.get("ctx") or {}).get("error")
    if isinstance(cause, VramplanError):  # a field's own reader said what is wrong (zero_config.load)
        return cause.field, cause.message
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
            cause = (err.get("ctx") or {}).get("error")
            if isinstance(cause, VramplanError):
                raise cause from None
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


def label(s: Setup) -> str:
    """The short name of a setup, as the alternatives list it: ``lora bf16 mb4 GC``."""
    if s.method == "inference":
        return f"inference{' ' + s.quant if s.quant != 'none' else ''} {s.precision} batch {s.micro_batch}"
    method = s.method if s.method != "qlora" else f"qlora {s.quant}"
    gc = "GC" if s.grad_checkpointing else "no GC"
    layout = ""
    if s.parallel != "none":
        layout = f" {s.parallel}" + (f"+offload {s.offload}" if s.offload != "none" else "")
    return f"{method} {s.precision}{layout} mb{s.micro_batch} {gc}"
