"""Every estimate and plan of a grid over the catalog, as JSON lines: run it before and after a
change to the search or the memory terms' arithmetic, and compare, to show that no number moved.

    python benchmarks/bench_digest.py write before.jsonl [--plans]
    python benchmarks/bench_digest.py compare before.jsonl after.jsonl

Each line is ``{"key": ..., "value": ...}``: the setup's fields and the model's name, and the
Estimate's (or the Plan's) JSON dump, or the error it raised. ``--plans`` adds plain plans
(``plan()``: the search, the suggestions and ``num_gpus="auto"``), which take longer.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from collections.abc import Iterator
from typing import Any

from vramplan import plan
from vramplan.errors import VramplanError
from vramplan.memory import estimate
from vramplan.models import catalog_names, load_model
from vramplan.setup import make_setup

#: one GPU: method, precision, checkpointing, accumulation and attention crossed.
SINGLE = (
    [
        {"method": m, "precision": p, "grad_checkpointing": gc, "grad_accum": acc, "attention": att}
        for m, p, gc, acc, att in itertools.product(
            ("full", "freeze", "lora"), ("bf16", "amp-bf16"), (False, True), (1, 4), ("sdpa", "eager")
        )
    ]
    + [
        {"method": "qlora", "quant": q, "grad_checkpointing": gc, "grad_accum": acc, "precision": p}
        for q, gc, acc, p in itertools.product(("bnb-nf4", "bnb-int8"), (False, True), (1, 2), ("bf16", "amp-bf16"))
    ]
    + [
        {"method": "full", "precision": "fp32", "optimizer": "paged-adamw-8bit", "micro_batch": 2},
        {"method": "full", "precision": "amp-fp16", "optimizer": "adafactor", "grad_checkpointing": False},
        {"method": "freeze", "freeze_trainable_layers": 5, "precision": "amp-bf16", "grad_checkpointing": False},
        {"method": "lora", "trainable_extra": "embeddings,lm_head", "lora_rank": 64, "grad_checkpointing": False},
        {"method": "lora", "lora_targets": "q_proj,v_proj", "lora_dropout": 0.0, "grad_checkpointing": False},
        {"method": "inference", "seq_len": 4096, "micro_batch": 4},
        {"method": "inference", "quant": "bnb-nf4", "kv_cache": "fp8"},
    ]
)

#: several GPUs: every layout, with and without checkpointing and accumulation.
MULTI = (
    [
        {
            "parallel": par,
            "num_gpus": n,
            "num_nodes": nodes,
            "method": m,
            "precision": p,
            "grad_checkpointing": gc,
            "grad_accum": acc,
            **extra,
        }
        for (par, extra), (n, nodes), m, p, gc, acc in itertools.product(
            (
                ("ddp", {}),
                ("zero1", {}),
                ("zero2", {}),
                ("zero3", {}),
                ("zero3", {"offload": "optimizer"}),
                ("zero3", {"offload": "optimizer+params"}),
                ("fsdp", {}),
                ("fsdp", {"fsdp_sharding": "shard_grad_op"}),
                ("fsdp", {"fsdp_sharding": "hybrid_shard"}),
                ("fsdp", {"offload": "optimizer+params"}),
            ),
            ((2, 1), (8, 4)),
            ("full", "lora"),
            ("bf16", "amp-bf16"),
            (False, True),
            (1, 4),
        )
    ]
    + [
        {"parallel": "device_map", "num_gpus": n, "method": m, "grad_checkpointing": gc, "precision": p, **extra}
        for n, m, gc, p, extra in itertools.product(
            (2, 3, 8, 64),
            ("full", "lora", "freeze"),
            (False, True),
            ("bf16", "amp-bf16"),
            ({}, {"optimizer": "paged-adamw-8bit"}),
        )
    ]
    + [{"parallel": "device_map", "num_gpus": n, "method": "qlora", "quant": "bnb-nf4"} for n in (2, 5)]
    + [{"parallel": "device_map", "num_gpus": n, "method": "inference"} for n in (2, 7)]
)

#: GRPO on one GPU.
GRPO = [
    {"rl": "grpo", "method": m, "grad_checkpointing": gc, "beta": beta, "micro_batch": 8, **extra}
    for m, gc, beta, extra in itertools.product(
        ("full", "lora"),
        (False, True),
        (0.0, 0.04),
        (
            {},
            {"vllm": "colocate", "vllm_card_bytes": 80 * 2**30},
            {"vllm": "colocate", "vllm_card_bytes": 24 * 2**30, "vllm_sleep": True},
        ),
    )
]

#: VLMs: images and video, the tower trained or frozen.
MEDIA = (
    [
        {"images_per_sample": k, "image_size": size, "method": m, "grad_checkpointing": gc, **extra}
        for k, size, m, gc, extra in itertools.product(
            (1, 4),
            ("", "1024x768"),
            ("full", "lora"),
            (False, True),
            ({}, {"parallel": "device_map", "num_gpus": 3}, {"parallel": "fsdp", "num_gpus": 2}),
        )
    ]
    + [{"video_frames": 16, "video_size": "640x360", "method": m} for m in ("full", "lora")]
    + [
        {"images_per_sample": 2, "rl": "grpo", "method": "lora", "micro_batch": 8},
        {"images_per_sample": 1, "method": "full", "freeze_vision": True, "freeze_projector": True},
    ]
)

#: MoE: experts adapted.
MOE = [
    {"method": "lora", "lora_targets": "all-linear", "lora_dropout": 0.0, "grad_checkpointing": gc, **extra}
    for gc, extra in itertools.product(
        (False, True), ({}, {"parallel": "fsdp", "num_gpus": 4}, {"parallel": "device_map", "num_gpus": 4})
    )
]

#: plain plans: the search, suggestions and --gpus auto.
PLANS: list[tuple[str, dict[str, Any]]] = [
    ("4090", {}),
    ("3060", {}),
    ("h100", {"num_gpus": 8}),
    ("3060", {"num_gpus": 4, "num_nodes": 2}),
    ("4090", {"num_gpus": "auto"}),
    ("3060", {"num_gpus": "auto", "method": "full"}),
    ("a100-80g", {"num_gpus": "auto", "parallel": "zero3"}),
    ("4090", {"num_gpus": "auto", "parallel": "device_map"}),
    ("4090", {"num_gpus": "auto", "num_nodes": 2, "parallel": "fsdp"}),
    ("3060", {"method": "full", "seq_len": 8192, "micro_batch": 4}),
    ("4090", {"rl": "grpo"}),
]


def _entries(with_plans: bool) -> Iterator[tuple[dict[str, Any], Any]]:
    for name in catalog_names():
        spec = load_model(name)
        grid = SINGLE + MULTI + GRPO
        if spec.vision is not None:
            grid = grid + MEDIA
        if spec.moe is not None:
            grid = grid + MOE
        for fields in grid:
            if spec.moe is not None and fields.get("method", "lora") in ("lora", "qlora"):
                fields = {"lora_dropout": 0.0, **fields}  # PEFT refuses dropout on the experts' ParamWrapper
            key = {"model": name, **fields}
            try:
                # the card vLLM takes its share of is the estimate's (the key keeps its old name)
                setup = make_setup(**{k: v for k, v in fields.items() if k != "vllm_card_bytes"})
                value = json.loads(estimate(spec, setup, card_bytes=fields.get("vllm_card_bytes")).model_dump_json())
            except VramplanError as exc:
                value = {"error": str(exc)}
            yield key, value
        if not with_plans:
            continue
        for gpu, pinned in PLANS:
            key = {"model": name, "gpu": gpu, "plan": True, **pinned}
            try:
                value = json.loads(plan(name, gpu, **pinned).model_dump_json())
            except VramplanError as exc:
                value = {"error": str(exc)}
            yield key, value


def write(path: str, with_plans: bool) -> None:
    t0 = time.perf_counter()
    n = 0
    with open(path, "w") as f:
        for key, value in _entries(with_plans):
            f.write(json.dumps({"key": key, "value": value}, sort_keys=False) + "\n")
            n += 1
    print(f"{n} entries in {time.perf_counter() - t0:.1f} s -> {path}")


def compare(a: str, b: str) -> int:
    def rows(path: str) -> dict[str, str]:
        out = {}
        for line in open(path):
            row = json.loads(line)
            out[json.dumps(row["key"], sort_keys=True)] = json.dumps(row["value"])
        return out

    before, after = rows(a), rows(b)
    missing = sorted(set(before) ^ set(after))
    changed = [k for k in before if k in after and before[k] != after[k]]
    for k in changed[:10]:
        print(f"changed: {k}\n  before {before[k][:300]}\n  after  {after[k][:300]}")
    print(f"{len(before)} vs {len(after)} entries; {len(changed)} changed; {len(missing)} in one file only")
    return 1 if changed or missing else 0


def main() -> int:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("write")
    w.add_argument("path")
    w.add_argument("--plans", action="store_true")
    c = sub.add_parser("compare")
    c.add_argument("a")
    c.add_argument("b")
    args = ap.parse_args()
    if args.cmd == "write":
        write(args.path, args.plans)
        return 0
    return compare(args.a, args.b)


if __name__ == "__main__":
    sys.exit(main())
