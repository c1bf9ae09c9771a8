"""DeepSpeed ZeRO's own buffers, counted on its engine: 2 CPU ranks (gloo), a tiny Qwen2.

Runs ``deepspeed.initialize`` on a random-weight Qwen2 (bf16) with the trainer's torch AdamW
handed in (what transformers' Trainer does when the ds_config has no "optimizer" block), one
micro-batch, ``engine.backward`` and ``engine.step``, under the live-storage counter
(vramplan/trace/counter.py). Rank 0 reports, per phase, the peak of live bytes above what was
alive before the phase, and what vramplan.memory.zero counts for the same config.

    DS_ACCELERATOR=cpu python benchmarks/zero_buffers.py                  # the grid, markdown rows
    DS_ACCELERATOR=cpu python benchmarks/zero_buffers.py --stage 2 --bucket 200000 --overlap

The buffers scale with the config (reduce_bucket_size, overlap_comm), not with the model;
benchmarks/zero_buffers.md holds the recorded table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from typing import Any

HIDDEN, LAYERS, VOCAB, INTER = 256, 4, 4096, 688
SEQ = 64


def _model_kwargs() -> dict[str, Any]:
    return dict(
        hidden_size=HIDDEN,
        intermediate_size=INTER,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=VOCAB,
        tie_word_embeddings=False,
    )


def _model() -> Any:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(**_model_kwargs())
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        return Qwen2ForCausalLM(cfg)
    finally:
        torch.set_default_dtype(default)


def ds_config(stage: int, bucket: int, overlap: bool, accum: int = 1, reuse: int = 10**9) -> dict[str, Any]:
    zero: dict[str, Any] = {"stage": stage, "overlap_comm": overlap, "contiguous_gradients": True}
    zero["reduce_bucket_size"] = bucket
    zero["allgather_bucket_size"] = bucket
    if stage == 3:
        zero["stage3_prefetch_bucket_size"] = 0
        zero["stage3_param_persistence_threshold"] = 0
        zero["stage3_max_reuse_distance"] = reuse
    return {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": accum,
        "bf16": {"enabled": True},
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,
    }


def _dump(name: str, snapshot: dict[int, Any]) -> None:
    """What was alive at a peak, by dtype and size (``--dump``)."""
    by: dict[tuple[str, int, str], int] = {}
    for item in snapshot.values():
        key = (item.dtype, item.nbytes, item.creator)
        by[key] = by.get(key, 0) + 1
    big = sorted(((n * k[1], k, n) for k, n in by.items()), reverse=True)[:12]
    print(name, [(k[0], k[1], k[2], n) for _, k, n in big], file=sys.stderr)


def _run(rank: int, world: int, port: int, args: argparse.Namespace, out: str) -> None:
    result = run_rank(rank, world, port, args)
    if rank == 0:
        with open(out, "w") as f:
            json.dump(result, f)


def model_config() -> dict[str, Any]:
    """The tiny model's config.json (for vramplan's own spec of it)."""
    return dict(_model_kwargs(), model_type="qwen2", architectures=["Qwen2ForCausalLM"], max_position_embeddings=32768)


def run_rank(rank: int, world: int, port: int, args: argparse.Namespace) -> dict[str, Any]:
    """One rank's run: ``{"params": ..., "marks": {phase mark: live bytes}}``."""
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed
    import torch
    from deepspeed.accelerator import get_accelerator

    from vramplan.trace.counter import Counter, CountingMode

    # the CPU accelerator counts devices with ``numactl --hardware`` (stage 3 asks in
    # __avg_scatter_grads); without numactl, the ranks of this one machine
    type(get_accelerator()).device_count = lambda self: world
    deepspeed.init_distributed(dist_backend="gloo")
    counter = Counter(keep_timeline=False)
    marks: dict[str, int] = {}
    with CountingMode(counter):
        config = ds_config(args.stage, args.bucket, args.overlap, args.accum, args.reuse)
        if args.stage == 3:
            # as transformers builds it under ZeRO-3 (from_pretrained inside deepspeed.zero.Init):
            # partitioned at creation, and F.linear replaced by zero3_linear_wrap
            with deepspeed.zero.Init(config_dict_or_path=config):
                model = _model()
        else:
            model = _model()
        params = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True)
        engine, *_ = deepspeed.initialize(model=model, optimizer=opt, config=config)
        ids = torch.randint(0, VOCAB, (1, SEQ))
        for step in range(2):
            marks[f"before_forward{step}"] = counter.total
            counter.peak = 0
            for micro in range(args.accum):
                counter.set_phase("forward", step)
                loss = engine(input_ids=ids, labels=ids).loss
                marks[f"forward_end{step}"] = counter.total
                if args.dump and rank == 0:
                    _dump(f"forward_end{step}", counter.live)
                counter.set_phase("backward", step)
                engine.backward(loss)
                del loss
                if micro < args.accum - 1:
                    engine.step()  # not a boundary: DeepSpeed only counts the micro-step
            marks[f"backward_peak{step}"] = counter.peak
            if args.dump and rank == 0:
                _dump(f"backward_peak{step}", counter.peak_snapshot)
            marks[f"backward_end{step}"] = counter.total
            counter.set_phase("optimizer", step)
            counter.peak = 0
            engine.step()
            marks[f"step_peak{step}"] = counter.peak
            if args.dump and rank == 0:
                _dump(f"step_peak{step}", counter.peak_snapshot)
            marks[f"after_step{step}"] = counter.total
    return {"params": params, "marks": marks}


def measure(
    stage: int, bucket: int, overlap: bool, accum: int = 1, reuse: int = 10**9, world: int = 2, dump: bool = False
) -> dict[str, Any]:
    """One run of ``world`` CPU ranks; rank 0's marks."""
    import socket

    import torch.multiprocessing as mp

    args = argparse.Namespace(stage=stage, bucket=bucket, overlap=overlap, accum=accum, reuse=reuse, dump=dump)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "marks.json")
        mp.spawn(_run, args=(world, port, args, out), nprocs=world, join=True)
        with open(out) as f:
            return json.load(f)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--stage", type=int, choices=(1, 2, 3))
    p.add_argument("--bucket", type=int, default=200_000)
    p.add_argument("--overlap", action="store_true")
    p.add_argument("--accum", type=int, default=1, help="gradient_accumulation_steps")
    p.add_argument("--reuse", type=int, default=10**9, help="stage3_max_reuse_distance")
    p.add_argument("--grid", action="store_true", help="the whole grid of --stage (buckets, overlap, accumulation)")
    p.add_argument("--dump", action="store_true", help="print what is alive at each peak (stderr)")
    a = p.parse_args()
    stages = (a.stage,) if a.stage else (2, 3)
    grid = [(a.stage, a.bucket, a.overlap, a.accum, a.reuse)]
    if a.grid or not a.stage:
        grid = [(s, b, o, 1, 10**9) for s in stages for b in (100_000, 200_000, 400_000) for o in (False, True)]
        grid += [(s, 200_000, True, 2, 10**9) for s in stages]
        grid += [(3, 200_000, False, 1, r) for r in (0, 2_000_000, 4_000_000) if 3 in stages]
    for stage, bucket, overlap, accum, reuse in grid:
        r = measure(stage, bucket, overlap, accum, reuse, dump=a.dump)
        row = {"stage": stage, "bucket": bucket, "overlap": overlap, "accum": accum, "reuse": reuse}
        print(json.dumps({**row, "params": r["params"], **r["marks"]}))
        sys.stdout.flush()


if __name__ == "__main__":
    main()
