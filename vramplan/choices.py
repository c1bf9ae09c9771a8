"""The values each choice of a Setup takes (value names are the same everywhere: CLI flags,
Python keywords, tables/measured rows)."""

from __future__ import annotations

from typing import Literal, get_args

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
