"""The keyword arguments ``plan()`` takes for a Setup field, typed, so that an editor completes
their names and checks their values (``plan(model, gpu, **fields: Unpack[PlanFields])``).

One key per :class:`vramplan.setup.Setup` field with the field's type (tests/test_notebook.py
holds the two to the same names); ``num_gpus`` also takes ``"auto"``, the fewest GPUs that fit.
Values are validated as the CLI's flags are: a wrong one raises VramplanError naming the field.
"""

from __future__ import annotations

from typing import Literal, TypedDict

from vramplan.choices import (
    RL,
    VLLM,
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
from vramplan.length_file import LengthDistribution
from vramplan.zero_config import ZeroConfig


class PlanFields(TypedDict, total=False):
    method: Method
    quant: Quant
    precision: Precision
    lora_rank: int
    lora_alpha: float
    lora_dropout: float
    lora_targets: str
    trainable_extra: tuple[Literal["embeddings", "lm_head"], ...]
    freeze_trainable_layers: int
    optimizer: Optimizer
    seq_len: int
    micro_batch: int
    grad_accum: int
    grad_checkpointing: bool
    attention: Attention
    num_gpus: int | Literal["auto"]
    num_nodes: int
    parallel: Parallel
    offload: Offload
    fsdp_sharding: FsdpSharding
    kv_cache: KVCache
    image_size: str
    images_per_sample: int
    video_frames: int
    video_size: str
    freeze_vision: bool
    freeze_projector: bool
    rl: RL
    num_generations: int
    completion_len: int
    beta: float
    vllm: VLLM
    vllm_gpu_memory_utilization: float
    vllm_sleep: bool
    zero3_init: Literal["auto", "on", "off"]
    evaluation: Literal["auto", "none", "loss", "logits", "generate"]
    eval_batch: int
    eval_samples: int
    lengths: Literal["fixed", "packed", "variable"]
    avg_tokens: int
    lengths_file: LengthDistribution | list[int] | str | None
    deepspeed_config: ZeroConfig | dict[str, object] | str | None
