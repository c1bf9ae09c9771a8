"""The golden plans: a fixed list of plans and emitted files whose JSON must not change
when code moves (tests/test_golden.py). Regenerate on purpose only, after a change that is
meant to move a number or a field, with ``python tests/golden/cases.py --write``; the
commit that does so says why.

Each case is ``(name, kind, args)``: kind ``plan`` (``plan(model, gpu, **fields)``, its
``model_dump_json()``, which is what ``vramplan ... --json`` prints), ``emit``
(``emit(plan(...), target)``: the files, command and adjustments), ``cli`` (the CLI's
stdout and exit code for an argv) or ``error`` (the VramplanError a plan raises).
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import sys
from pathlib import Path
from typing import Any
from unittest import mock

HERE = Path(__file__).resolve().parent
GOLDEN = HERE / "plans.jsonl.gz"

CATALOG = [
    "gemma-2-9b", "llama-2-70b", "llama-2-7b", "llama-3-8b", "llama-3.1-405b", "llama-3.1-70b", "llama-3.1-8b",
    "llama-3.2-1b", "llama-3.2-3b", "llama-3.3-70b", "mistral-7b-v0.3", "mixtral-8x7b", "phi-3-mini", "qwen-1.8b",
    "qwen-14b", "qwen-72b", "qwen-7b", "qwen-vl-chat", "qwen1.5-14b", "qwen1.5-7b", "qwen2-7b", "qwen2-vl-2b",
    "qwen2-vl-72b", "qwen2-vl-7b", "qwen2.5-0.5b", "qwen2.5-1.5b", "qwen2.5-14b", "qwen2.5-32b", "qwen2.5-3b",
    "qwen2.5-72b", "qwen2.5-7b", "qwen2.5-vl-3b", "qwen2.5-vl-72b", "qwen2.5-vl-7b", "qwen3-30b-a3b", "qwen3-8b",
    "yi-34b",
]  # fmt: skip
TEXT = [
    "qwen2.5-7b",
    "llama-3.1-8b",
    "gemma-2-9b",
    "phi-3-mini",
    "qwen-7b",
    "mixtral-8x7b",
    "qwen3-30b-a3b",
    "qwen3-8b",
]
PRECISIONS = ["bf16", "fp16", "fp32", "amp-bf16"]
QUANTS = ["bnb-int8", "bnb-nf4", "bnb-nf4-dq", "bnb-fp4", "gptq-int4", "awq-int4"]
OPTIMIZERS = ["adamw", "adamw-fused", "adamw-8bit", "paged-adamw-8bit", "paged-adamw-32bit", "adafactor", "sgd", "lion"]
TARGETS = ["trl", "swift", "llamafactory", "axolotl"]


def cases() -> list[tuple[str, str, dict[str, Any]]]:
    out: list[tuple[str, str, dict[str, Any]]] = []

    def add(kind: str, model: str, gpu: str, **fields: Any) -> None:
        name = f"{kind}:{model}@{gpu}:" + ",".join(f"{k}={v}" for k, v in fields.items())
        out.append((name, kind, {"model": model, "gpu": gpu, **fields}))

    # every catalog model, searched, on a small and a large card
    for model in CATALOG:
        add("plan", model, "4090")
        add("plan", model, "a100-80g")
    # methods x precisions, pinned, on text families
    for model in TEXT:
        for method in ("full", "freeze", "lora"):
            for precision in PRECISIONS:
                add("plan", model, "a100-80g", method=method, precision=precision, seq_len=1024)
        add("plan", model, "4090", method="qlora", quant="bnb-nf4", seq_len=2048, micro_batch=2)
        add("plan", model, "a100-80g", method="inference", seq_len=4096, micro_batch=4)
    # quantizations (training and inference), optimizers, attention, checkpointing, accumulation
    for quant in QUANTS:
        add("plan", "llama-3.1-8b", "4090", method="qlora", quant=quant, seq_len=1024)
        add("plan", "qwen2.5-7b", "a10", method="inference", quant=quant, seq_len=2048)
    for kv in ("fp8", "int8", "int4"):
        add("plan", "llama-3.1-70b", "a100-80g", method="inference", kv_cache=kv, num_gpus=2, parallel="device_map")
    for opt in OPTIMIZERS:
        add("plan", "qwen2.5-3b", "a100-40g", method="full", optimizer=opt, seq_len=1024)
        add("plan", "qwen2.5-7b", "4090", method="lora", optimizer=opt, grad_accum=4)
    for attn in ("eager", "sdpa", "flash-attn-2"):
        for gc in (True, False):
            add("plan", "llama-3.2-3b", "a100-80g", method="lora", attention=attn, grad_checkpointing=gc, seq_len=4096)
    for model in ("qwen2.5-7b", "gemma-2-9b", "phi-3-mini", "qwen3-30b-a3b"):
        add(
            "plan", model, "a100-80g", method="lora", lora_rank=64, lora_alpha=128, trainable_extra="embeddings,lm_head"
        )
        add(
            "plan",
            model,
            "a100-80g",
            method="lora",
            lora_targets="q_proj,v_proj" if model != "phi-3-mini" else "qkv_proj",
        )
        add("plan", model, "a100-80g", method="freeze", freeze_trainable_layers=4)
    add("plan", "qwen3-30b-a3b", "a100-80g", method="lora", lora_targets="all-linear")
    add("plan", "mixtral-8x7b", "h100", method="qlora", quant="bnb-nf4", lora_targets="all-linear")
    for seq in (512, 8192, 32768):
        add("plan", "qwen2.5-7b", "h100", seq_len=seq)
    # parallel layouts
    for model in ("qwen2.5-7b", "llama-3.1-70b", "qwen2.5-vl-7b"):
        for par in ("ddp", "zero1", "zero2", "zero3", "fsdp", "device_map"):
            add(
                "plan",
                model,
                "a100-80g",
                method="full" if model != "llama-3.1-70b" else "lora",
                num_gpus=4,
                parallel=par,
            )
    for par, off in (
        ("zero2", "optimizer"),
        ("zero3", "optimizer"),
        ("zero3", "optimizer+params"),
        ("fsdp", "optimizer+params"),
    ):
        add("plan", "llama-3.1-70b", "a100-80g", method="full", num_gpus=8, parallel=par, offload=off)
    for shard in ("shard_grad_op", "hybrid_shard"):
        add(
            "plan",
            "qwen2.5-14b",
            "a100-80g",
            method="full",
            num_gpus=8,
            num_nodes=2,
            parallel="fsdp",
            fsdp_sharding=shard,
        )
        add(
            "plan",
            "qwen2.5-14b",
            "a100-80g",
            method="full",
            num_gpus=8,
            parallel="fsdp",
            fsdp_sharding=shard,
            grad_accum=4,
        )
    for model in ("qwen2.5-7b", "llama-3.1-70b", "mixtral-8x7b"):
        add("plan", model, "a100-80g", num_gpus=4)
        add("plan", model, "4090", num_gpus=8, method="full")
        add("plan", model, "a100-80g", num_gpus="auto", method="full")
    add("plan", "llama-3.1-405b", "h100", num_gpus="auto", method="full", parallel="zero3")
    add("plan", "qwen2.5-72b", "a100-80g", num_gpus=8, num_nodes=4, parallel="zero3", method="full")
    add(
        "plan",
        "llama-3.1-70b",
        "a100-80g",
        num_gpus=8,
        parallel="zero3",
        offload="optimizer",
        method="full",
        host_ram_gib=256,
    )
    add(
        "plan",
        "llama-3.1-70b",
        "a100-80g",
        num_gpus=8,
        parallel="zero3",
        offload="optimizer",
        method="full",
        host_ram_gib=64,
    )
    # vision-language models: images, videos, frozen tower
    for model in ("qwen2-vl-2b", "qwen2-vl-7b", "qwen2.5-vl-3b", "qwen2.5-vl-7b", "qwen-vl-chat"):
        for method in ("full", "lora", "qlora"):
            extra = {"quant": "bnb-nf4"} if method == "qlora" else {}
            add("plan", model, "a100-80g", method=method, images_per_sample=2, **extra)
        if model != "qwen-vl-chat":
            add("plan", model, "a100-80g", method="lora", image_size="1024x768", images_per_sample=3)
            add("plan", model, "a100-80g", method="lora", video_frames=16, video_size="640x360")
            add(
                "plan",
                model,
                "a100-80g",
                method="full",
                image_size="448x448",
                freeze_vision=True,
                freeze_projector=True,
            )
    # GRPO
    for model in ("qwen2.5-0.5b", "qwen2.5-7b", "qwen2.5-vl-3b"):
        for method in ("full", "lora", "qlora"):
            extra = {"quant": "bnb-nf4"} if method == "qlora" else {}
            add("plan", model, "a100-80g", method=method, rl="grpo", seq_len=1024, completion_len=512, **extra)
        add("plan", model, "a100-80g", method="lora", rl="grpo", beta=0.04, num_generations=4, micro_batch=4)
        add("plan", model, "a100-80g", method="lora", rl="grpo", vllm="colocate", vllm_gpu_memory_utilization=0.4)
        add("plan", model, "h100", method="full", rl="grpo", vllm="colocate", vllm_sleep=True)
    add("plan", "qwen2.5-vl-3b", "a100-80g", method="lora", rl="grpo", images_per_sample=1, image_size="512x512")
    # cards without bf16 / flash-attn, small cards
    for gpu in ("t4", "v100-sxm2-32gb", "rtx-3060-12gb", "mi300x", "h20", "b200"):
        add("plan", "qwen2.5-7b", gpu)
        add("plan", "llama-3.1-8b", gpu, method="qlora", quant="bnb-nf4")
    # emitted files, every target
    emits = [
        dict(method="lora", seq_len=1024),
        dict(method="lora", lora_rank=32, lora_alpha=64, lora_targets="q_proj,v_proj", grad_accum=4),
        dict(method="lora", trainable_extra="embeddings,lm_head"),
        dict(method="qlora", quant="bnb-nf4", optimizer="paged-adamw-8bit"),
        dict(method="qlora", quant="bnb-nf4-dq", attention="eager", micro_batch=2),
        dict(method="qlora", quant="bnb-int8"),
        dict(method="full", precision="bf16", optimizer="adamw-8bit"),
        dict(method="full", precision="amp-bf16", grad_checkpointing=False, seq_len=512),
        dict(method="freeze", freeze_trainable_layers=3),
        dict(method="full", num_gpus=4, parallel="ddp"),
        dict(method="lora", num_gpus=2, parallel="ddp"),
    ]
    for target in TARGETS:
        for fields in emits:
            add("emit", "qwen2.5-0.5b", "a100-80g", target=target, **fields)
        add("emit", "llama-3.1-8b", "4090", target=target, method="qlora", quant="bnb-nf4")
        add("emit", "gemma-2-9b", "a100-80g", target=target, method="lora")
        add("emit", "phi-3-mini", "a100-80g", target=target, method="lora")
        add("emit", "qwen3-30b-a3b", "a100-80g", target=target, method="lora")
    for fields in (
        dict(method="full", num_gpus=4, parallel="zero1"),
        dict(method="full", num_gpus=4, parallel="zero2"),
        dict(method="full", num_gpus=4, parallel="zero3"),
        dict(method="full", num_gpus=4, parallel="zero3", offload="optimizer"),
        dict(method="full", num_gpus=4, parallel="zero3", offload="optimizer+params"),
        dict(method="full", num_gpus=4, parallel="fsdp"),
        dict(method="lora", num_gpus=4, parallel="fsdp", fsdp_sharding="shard_grad_op"),
        dict(method="full", num_gpus=8, num_nodes=2, parallel="fsdp", fsdp_sharding="hybrid_shard"),
        dict(method="lora", num_gpus=2, parallel="device_map"),
        dict(method="lora", rl="grpo", seq_len=1024),
        dict(method="qlora", quant="bnb-nf4", rl="grpo", beta=0.04, num_generations=4, micro_batch=4),
        dict(method="lora", rl="grpo", vllm="colocate"),
    ):
        add("emit", "qwen2.5-7b", "a100-80g", target="trl", **fields)
    add("emit", "qwen2.5-vl-3b", "a100-80g", target="trl", method="lora", images_per_sample=1, image_size="512x512")
    add("emit", "qwen2.5-vl-3b", "a100-80g", target="trl", method="full", images_per_sample=1, freeze_vision=True)
    add("emit", "qwen2-vl-2b", "a100-80g", target="trl", method="lora", rl="grpo", images_per_sample=1)
    add("emit", "mixtral-8x7b", "a100-80g", target="trl", method="qlora", quant="bnb-nf4", lora_targets="all-linear")
    # refusals: the one-line error each raises
    add("error", "qwen2.5-7b", "4090", method="qlora")
    add("error", "qwen2.5-7b", "4090", quant="bnb-nf4", method="lora")
    add("error", "qwen2.5-7b", "t4", precision="bf16")
    add("error", "gemma-2-9b", "4090", attention="sdpa")
    add("error", "qwen2.5-7b", "4090", num_gpus=2)
    add("error", "qwen2.5-7b", "4090", rl="grpo", vllm="colocate", quant="bnb-int8", method="qlora")
    add("error", "qwen2.5-7b", "4090", offload="optimizer", num_gpus=2, parallel="ddp")
    add("error", "qwen-7b", "a100-80g", target="swift", method="lora")
    add("error", "qwen2.5-vl-7b", "a100-80g", target="swift", method="lora", images_per_sample=1)
    # the CLI: flags, exit codes and stdout
    for argv in (
        ["qwen2.5-7b", "--gpu", "4090", "--json"],
        ["qwen2.5-7b", "--gpu", "4090", "--method", "qlora", "--quant", "bnb-nf4", "--json"],
        ["llama-3.1-70b", "--gpu", "a100-80g", "--gpus", "4", "--parallel", "zero3", "--json"],
        ["llama-3.1-70b", "--gpu", "a100-80g", "--gpus", "auto", "--method", "full", "--json"],
        ["qwen2.5-7b", "--gpu", "a100-80g", "--method", "full", "--samples", "10000", "--avg-tokens", "700", "--json"],
        ["qwen2.5-7b", "--gpu", "h100", "--dataset-tokens", "100000000", "--price-per-hour", "2.5", "--json"],
        ["qwen2.5-vl-7b", "--gpu", "a100-80g", "--image-size", "1024x768", "--images-per-sample", "2", "--json"],
        ["qwen2.5-vl-7b", "--gpu", "a100-80g", "--video-frames", "8", "--video-size", "640x360", "--json"],
        ["qwen2.5-7b", "--gpu", "a100-80g", "--rl", "grpo", "--vllm", "colocate", "--vllm-memory", "0.4", "--json"],
        ["qwen2.5-7b", "--gpu", "4090", "--method", "full"],
        ["qwen2.5-7b", "--gpu", "4090", "--lora-rank", "64", "--lora-targets", "q_proj,v_proj", "--seq-len", "4096"],
        ["qwen2.5-0.5b", "--gpu", "a100-80g", "--emit", "trl", "--json"],
        ["qwen2.5-0.5b", "--gpu", "a100-80g", "--emit", "swift", "--method", "qlora", "--quant", "bnb-nf4", "--json"],
        ["qwen2.5-0.5b", "--gpu", "a100-80g", "--emit", "llamafactory", "--trainable-extra", "embeddings", "--json"],
        ["qwen2.5-0.5b", "--gpu", "a100-80g", "--emit", "axolotl", "--method", "full", "--json"],
        ["qwen2.5-7b", "--gpu", "4090", "--method", "qlora"],
        ["qwen2.5-7b", "--gpu", "4090", "--seq-len", "0"],
        ["qwen2.5-7b", "--gpu", "4090", "--parallel", "zero9"],
        [
            "qwen2.5-7b",
            "--gpu",
            "4090",
            "--host-ram",
            "64",
            "--gpus",
            "2",
            "--parallel",
            "zero3",
            "--offload",
            "optimizer",
        ],
        ["llama-3.1-70b", "--gpu", "4090", "--method", "full"],
    ):
        out.append(("cli:" + " ".join(argv), "cli", {"argv": argv}))
    return out


def run(kind: str, args: dict[str, Any]) -> Any:
    """The case's output as JSON-ready data."""
    with mock.patch("vramplan.stack.installed_transformers", return_value=GOLDEN_TRANSFORMERS):
        return _run(kind, dict(args))


#: the transformers release the golden plans assume installed (a MoE plan says which major it took)
GOLDEN_TRANSFORMERS = "5.25.0"


def _run(kind: str, args: dict[str, Any]) -> Any:
    from vramplan import plan
    from vramplan.emit import emit
    from vramplan.errors import VramplanError

    if kind == "cli":
        from vramplan.cli import main

        buf, err = io.StringIO(), io.StringIO()
        width = os.environ.get("COLUMNS")
        os.environ["COLUMNS"] = "100"  # rich's tables wrap at the terminal's width
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(err):
            try:
                code = main(list(args["argv"]))
            except SystemExit as exc:  # argparse's refusals
                code = exc.code
            finally:
                if width is None:
                    os.environ.pop("COLUMNS")
                else:
                    os.environ["COLUMNS"] = width
        return {"exit": code, "stdout": buf.getvalue(), "stderr": err.getvalue()}
    model, gpu, target = args.pop("model"), args.pop("gpu"), args.pop("target", None)
    try:
        p = plan(model, gpu, **({"trainer": target} if kind == "emit" else {}), **args)
        if kind == "emit":
            return json.loads(emit(p, target, force=True).model_dump_json())
        if kind == "plan":
            return json.loads(p.model_dump_json())
        return {"no error": True}
    except VramplanError as exc:
        return {"field": exc.field, "error": str(exc)}


def read() -> dict[str, Any]:
    with gzip.open(GOLDEN, "rt", encoding="utf-8") as f:
        return {row["case"]: row["output"] for row in map(json.loads, f)}


def write() -> None:
    rows = [json.dumps({"case": name, "output": run(kind, args)}, sort_keys=True) for name, kind, args in cases()]
    with gzip.GzipFile(GOLDEN, "wb", mtime=0) as f:
        f.write(("\n".join(rows) + "\n").encode())
    print(f"wrote {len(rows)} cases to {GOLDEN}")


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parents[1]))
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python tests/golden/cases.py --write")
    write()
