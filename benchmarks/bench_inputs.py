"""Wall time of the plain planner at the edges of its inputs (not a timed test).

    python benchmarks/bench_inputs.py [--timeout 120] [--only SUBSTRING] [--profile N]

Each case runs ``vramplan MODEL --gpu G [flags]`` in a fresh process (imports and catalog
included), as a user would. The target is under 2 s per case on a 2-core machine. The
1024-layer models are catalog configs with ``num_hidden_layers`` raised to 1024, the largest
count the input checks allow, written to a temporary folder. ``--profile N`` prints the
N most expensive functions (cumulative) of each case, from cProfile in-process.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from vramplan.models import models_dir

MODELS = models_dir()

#: the most GPUs in a run and on one node (vramplan/setup.py MAX_GPUS, MAX_GPUS_PER_NODE).
GPUS, PER_NODE = 4096, 64
NODES = GPUS // PER_NODE
LAYERS = 1024


def deep_config(name: str, folder: Path, tag: str = "", **extra: object) -> str:
    """A catalog config with ``num_hidden_layers`` = LAYERS (its per-layer lists stretched),
    and ``extra`` keys set."""
    cfg = json.loads((MODELS / name / "config.json").read_text()) | extra
    for c in (cfg, cfg.get("text_config") or {}):
        if "num_hidden_layers" in c:
            c["num_hidden_layers"] = LAYERS
        if isinstance(c.get("layer_types"), list):
            c["layer_types"] = (c["layer_types"] * LAYERS)[:LAYERS]
    out = folder / f"{name}-{LAYERS}{tag}"
    out.mkdir(exist_ok=True)
    (out / "config.json").write_text(json.dumps(cfg))
    return str(out)


def cases(folder: Path) -> list[tuple[str, list[str]]]:
    deep = {n: deep_config(n, folder) for n in ("llama-3.1-405b", "qwen3-30b-a3b", "qwen2-vl-72b", "gemma-2-9b")}
    big, moe, vlm = deep["llama-3.1-405b"], deep["qwen3-30b-a3b"], deep["qwen2-vl-72b"]
    # every other layer MoE (one run of identical layers per layer), 16,384 experts
    sparse = deep_config("qwen3-30b-a3b", folder, "-sparse", decoder_sparse_step=2, num_experts=1 << 14)
    cmds = [
        ("baseline", "qwen2.5-7b --gpu 4090"),
        ("auto, 405b on a 3060 (nothing fits)", "llama-3.1-405b --gpu 3060 --gpus auto"),
        ("auto, 405b on an h100", "llama-3.1-405b --gpu h100 --gpus auto"),
        ("auto, 1024-layer 405b on a 3060", f"{big} --gpu 3060 --gpus auto"),
        ("auto, 1024 layers, nodes 64", f"{big} --gpu 3060 --gpus auto --nodes {NODES}"),
        ("auto, 1024 layers, device_map", f"{big} --gpu 3060 --gpus auto --parallel device_map"),
        ("device_map 64 GPUs", f"qwen2.5-7b --gpu 4090 --gpus {PER_NODE} --parallel device_map"),
        ("device_map 4096 GPUs", f"qwen2.5-7b --gpu 4090 --gpus {GPUS} --parallel device_map"),
        ("device_map 64, 1024 layers", f"{big} --gpu 3060 --gpus {PER_NODE} --parallel device_map"),
        (
            "device_map 64, vlm 1024 layers, 256 images",
            f"{vlm} --gpu 3060 --gpus {PER_NODE} --parallel device_map --images-per-sample 256",
        ),
        ("zero3 4096 GPUs", f"llama-3.1-405b --gpu h100 --gpus {PER_NODE} --nodes {NODES} --parallel zero3"),
        ("fsdp 4096, 1024 layers", f"{big} --gpu 3060 --gpus {PER_NODE} --nodes {NODES} --parallel fsdp"),
        ("every layout 4096, 1024 layers", f"{big} --gpu 3060 --gpus {PER_NODE} --nodes {NODES}"),
        ("1024 layers, one GPU", f"{big} --gpu 3060"),
        ("1024 layers, no GC, eager", f"{big} --gpu 3060 --attention eager --no-grad-checkpointing"),
        ("1024 layers, freeze", f"{big} --gpu 3060 --method freeze --freeze-trainable-layers 1000"),
        ("moe 1024 layers", f"{moe} --gpu 3060"),
        ("moe 1024 layers all-linear", f"{moe} --gpu 3060 --lora-targets all-linear"),
        ("moe every other layer, 1024 layers, auto", f"{sparse} --gpu 3060 --gpus auto"),
        ("moe every other layer, fsdp 4096", f"{sparse} --gpu 3060 --gpus {PER_NODE} --nodes {NODES} --parallel fsdp"),
        ("gemma-2 1024 layers", f"{deep['gemma-2-9b']} --gpu 3060"),
        ("vlm 256 images", "qwen2-vl-72b --gpu 3060 --images-per-sample 256"),
        ("vlm 768 video frames", "qwen2-vl-72b --gpu 3060 --video-frames 768 --video-size 1920x1080"),
        ("vlm 1024 layers, 256 images", f"{vlm} --gpu 3060 --images-per-sample 256 --image-size 4096x4096"),
        ("seq 2**20, mb 4096", f"{big} --gpu 3060 --seq-len {1 << 20} --micro-batch 4096"),
        ("grpo 1024 layers", f"{big} --gpu 3060 --rl grpo --num-generations 1024"),
        ("grpo vllm, 1024 layers", f"{big} --gpu 3060 --rl grpo --vllm colocate"),
        ("grpo vlm, 1024 layers", f"{vlm} --gpu 3060 --rl grpo --images-per-sample 256"),
        (
            "inference device_map 64, 1024 layers",
            f"{big} --gpu 3060 --method inference --gpus {PER_NODE} --parallel device_map",
        ),
        (
            "many pins, nothing fits",
            f"{big} --gpu 3060 --method full --precision bf16 --optimizer adamw --seq-len {1 << 20} --micro-batch 8"
            f" --grad-accum 64 --attention eager --gpus {PER_NODE} --nodes {NODES} --parallel zero3 --lora-rank 64"
            " --no-grad-checkpointing",
        ),
    ]
    return [(name, cmd.split()) for name, cmd in cmds]


def wall(args: list[str], timeout: float) -> tuple[float, float, str]:
    """Wall and CPU seconds (user + system) of one CLI run in a fresh process, and how it ended.
    CPU seconds move less than wall time when other work shares the machine."""
    code = "import sys; from vramplan.cli import main; sys.exit(main(sys.argv[1:]))"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    try:
        r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return time.perf_counter() - t0, float("nan"), "timeout"
    seconds = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    status = f"exit {r.returncode}"
    if r.returncode not in (0, 1):
        status += ": " + (r.stderr.strip().splitlines() or [""])[-1][:80]
    return seconds, cpu, status


def profile(args: list[str], top: int) -> None:
    import contextlib
    import cProfile
    import io
    import pstats

    from vramplan.cli import main

    prof = cProfile.Profile()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        prof.runcall(main, args)
    pstats.Stats(prof).sort_stats("cumulative").print_stats(top)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("--only", default="", help="run the cases whose name holds this")
    ap.add_argument("--profile", type=int, default=0, help="print the N costliest functions of each case")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        todo = [(n, a) for n, a in cases(Path(tmp)) if args.only in n]
        print("| case | wall | CPU | result |")
        print("|---|---|---|---|")
        worst = 0.0
        for name, argv in todo:
            if args.profile:
                print(f"## {name}")
                profile(argv, args.profile)
                continue
            seconds, cpu, status = wall(argv, args.timeout)
            worst = max(worst, seconds)
            print(f"| {name} | {seconds:.2f} s | {cpu:.2f} s | {status} |", flush=True)
        if not args.profile:
            print(f"\nslowest: {worst:.2f} s (target < 2 s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
