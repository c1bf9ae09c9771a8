"""Replay traced steps through the caching allocator and compare the reserved tier with the
planner's (allocated + the cached logits' block, before the fitted slack).

    python3 benchmarks/allocator_replay.py [--limit N] [--every K]

For each single-process grid configuration (vramplan.validate.GRID; every K-th one), two
traced steps are replayed (vramplan/trace/allocator.py). Printed per row: the traced
allocated peak, the replay's reserved peak, what the step's own fragmentation adds
(replayed - traced), the planner's ``overhead/logits_segment`` for the same setup, what the
fitted slack base would have to cover of the difference, the least a card must offer for
the replayed stream (``needed``: torch releases wholly free segments before it reports
out-of-memory) and the planner's reserved tier, which sits under its fit verdict.

    python3 benchmarks/allocator_replay.py --lengths N [--layers L]

traces N micro-batches of different lengths in one process (a Llama-shaped model of Qwen-7B's
dimensions, LoRA r8 on q,k,v, checkpointing; lengths drawn from a log-normal of ms-swift's
benchmark dataset, cls-fudan-news-zh, 3234 +- 2547 tokens, cut to 91..2048), replays the one
stream, then N micro-batches all at 2048, and prints each new segment above 50 MiB. What the
allocator does that the replay models (c10/cuda/CUDACachingAllocator.cpp, torch 2.1 to today,
default configuration): 512-byte rounding, the 1 MiB small pool, 2 / 20 MiB / rounded-to-2 MiB
segments, best-fit reuse of any larger cached block, splitting (remainder >= 512 B small, > 1 MiB
large), merging within a segment only, no segment returned until a cudaMalloc fails.
Measured (``--lengths 8 --layers 2``): fixed 7.43 GiB replayed reserved (traced 6.62); variable
14.01 GiB (traced 6.56), new segments only at the batches longer than every earlier one, three
loss-chain blocks each; needed stays near the allocated peak (6.81 GiB). With 48 batches and 4
layers (same draw): 8.19 vs 14.77 GiB, records 963, 1584, 1621, 2015. memory/lengths.py takes
that rule in expectation.

    python3 benchmarks/allocator_replay.py --row ID

traces a one-process row of tables/measured/reports.csv for two steps, replays it and prints each new
segment of 100 MiB or more with the storage that asked for it (step, phase, op, shape, dtype), then the
replay's peaks beside the plan's tiers and the measured value. ``--row fms-a100-r60`` (Mistral-7B
QLoRA, 8 x 4,096 tokens): a new 1.75 GiB segment at each early layer's fp32 MLP products, split by the
next layer's checkpoint, and the loss chain's 3.9 GiB blocks in segments of their own; 46.65 GiB
replayed reserved against 44.97 on the card (memory/forward_cache.py).

    python3 benchmarks/allocator_replay.py --trl

is why a replay of varied lengths can show no growth at all: the cache grows only where a
record's blocks fit no cached block, and TRL's own SFT step (its fused LM head, tiled) makes no
t·V block; its length-shaped blocks fit the larger cached ones. Qwen2.5-0.5B LoRA, GC, 8
micro-batches of 700..2048 tokens: the full-logits loop replays 8.95 GiB reserved against 5.34
at 2048 (needed 4.77 against 4.63), TRL's step 1.45 against 1.40. The earlier 8.074 vs 8.072
GiB (48 micro-batches, whose script is not kept) is that second case, a stream whose longest
batch came first, or micro-batches replayed each through its own allocator: the cache grows
only at records within one process.
"""

from __future__ import annotations

import argparse
import time


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--every", type=int, default=1)
    ap.add_argument("--lengths", type=int, default=0, help="trace this many variable-length micro-batches")
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--trl", action="store_true", help="the order 700..2048 through TRL's own step and the loop")
    ap.add_argument("--row", default="", help="trace a row of tables/measured/reports.csv and show its new segments")
    args = ap.parse_args()
    if args.row:
        return row_segments(args.row)
    if args.trl:
        return trl_against_loop()
    if args.lengths:
        return lengths_replay(args.lengths, args.layers)
    if args.every < 1 or args.limit < 0:
        ap.error("--every must be at least 1 and --limit at least 0")

    from vramplan.memory.phases import estimate
    from vramplan.models import load_model
    from vramplan.trace.run import trace
    from vramplan.validate import grid_setups

    gib = 2**30
    rows = [(m, s) for m, s in grid_setups() if s.parallel == "none" and s.num_gpus == 1 and s.rl == "none"]
    rows = rows[:: args.every][: args.limit or None]
    print(
        f"{'model':<22} {'setup':<44} {'traced':>7} {'replay':>7} {'frag':>6} {'logits':>6} {'rest':>6}"
        f" {'needed':>7} {'plan':>7}  GiB"
    )
    for model, setup in rows:
        t0 = time.perf_counter()
        try:
            r = trace(model, setup, steps=2, keep_timeline=False)
        except Exception as exc:  # reported, not fatal
            print(f"{model:<22} FAILED {type(exc).__name__}: {str(exc)[:120]}")
            continue
        est = estimate(load_model(model), setup)
        seg = est.terms.get("overhead/logits_segment", 0)
        frag = (r.simulated_reserved_bytes or 0) - r.peak_bytes
        label = f"{setup.method} {setup.quant} {setup.precision} s{setup.seq_len}x{setup.micro_batch}"
        label += " gc" if setup.grad_checkpointing else ""
        print(
            f"{model:<22} {label:<44} {r.peak_bytes / gib:7.2f} {(r.simulated_reserved_bytes or 0) / gib:7.2f}"
            f" {frag / gib:6.2f} {seg / gib:6.2f} {(frag - seg) / gib:6.2f}"
            f" {(r.simulated_needed_bytes or 0) / gib:7.2f} {est.reserved_bytes / gib:7.2f}"
            f"  ({time.perf_counter() - t0:.0f} s)",
            flush=True,
        )
    return 0


def lengths_replay(n: int, layers: int) -> int:
    """One process, ``n`` micro-batches of drawn lengths, then ``n`` at 2048: replayed."""
    import json
    import math
    import random
    import tempfile

    import torch

    from vramplan.setup import make_setup
    from vramplan.trace import allocator, run

    cfg = {
        "model_type": "llama",
        "hidden_size": 4096,
        "intermediate_size": 11008,
        "num_hidden_layers": layers,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "vocab_size": 151936,
        "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
    }
    path = tempfile.mkdtemp() + "/config.json"
    with open(path, "w") as f:
        json.dump(cfg, f)
    rnd = random.Random(0)
    mu, s2 = math.log(3234) - math.log(1 + (2547 / 3234) ** 2) / 2, math.log(1 + (2547 / 3234) ** 2)

    def draw() -> int:
        while True:
            x = int(math.exp(rnd.gauss(mu, math.sqrt(s2))))
            if 91 <= x <= 2048:
                return x

    gib, mib = 2**30, 2**20
    for name, lengths in (("variable", [draw() for _ in range(n)]), ("fixed", [2048] * n)):
        it = iter(lengths)

        def ids_maker(vocab: int, setup: object, device: str, fake_mode: object, it=it) -> object:
            def make() -> object:
                with fake_mode:  # type: ignore[attr-defined]
                    return torch.randint(0, vocab, (1, next(it)), device=device)

            return make

        seen: list[list[tuple[int, int]]] = []
        original_ids, original_replay = run._ids_maker, run.replay
        run._ids_maker = ids_maker  # type: ignore[assignment]
        run.replay = lambda ev, seen=seen, keep=original_replay: (seen.append(list(ev)), keep(ev))[1]  # type: ignore[assignment]
        try:
            setup = make_setup(
                method="lora", seq_len=2048, grad_checkpointing=True, lora_targets="q_proj,k_proj,v_proj", grad_accum=n
            )
            r = run.trace(path, setup, steps=1, keep_timeline=False)
        finally:
            run._ids_maker, run.replay = original_ids, original_replay
        a = allocator.CachingAllocator()
        for key, nbytes in seen[0]:
            if nbytes < 0:
                a.free(key)
                continue
            before = a.reserved
            a.malloc(key, nbytes)
            if a.reserved > before and nbytes > 50 * mib:
                print(f"  {name}: new {nbytes / mib:.0f} MiB segment, reserved {a.reserved / gib:.2f} GiB")
        print(
            f"{name}: lengths {lengths[:12]}... traced {r.peak_bytes / gib:.2f} GiB, replayed reserved"
            f" {a.peak_reserved / gib:.2f}, needed {a.peak_needed / gib:.2f}",
            flush=True,
        )
    return 0


ORDER = [700, 1500, 900, 1200, 2048, 1000, 1800, 600]


def trl_against_loop() -> int:
    """Qwen2.5-0.5B LoRA, GC, 8 micro-batches of ORDER's lengths (records 700, 1500, 2048) and 8
    at 2048, replayed: through vramplan's loop (the model's full-logits loss) and through TRL's
    own SFT step (trace/trl_sft.py: its fused LM head never makes a t·V block). The TRL batch
    is made inside trace_sft at ``seq_len``; its three length-shaped calls (the ids, the
    positions and their expand) are given each micro-batch's length here."""
    import contextlib

    import torch

    from vramplan.setup import make_setup
    from vramplan.trace import run, trl_sft

    gib = 2**30
    setup = make_setup(method="lora", seq_len=2048, grad_checkpointing=True, grad_accum=4)

    @contextlib.contextmanager
    def lengths(order: list[int]) -> object:
        it, last = iter(order), [2048]
        randint, arange, expand = torch.randint, torch.arange, torch.Tensor.expand

        def randint_(low: int, high: int, size: tuple[int, ...], **kw: object) -> torch.Tensor:
            if tuple(size)[-1] == 2048:
                size = (*tuple(size)[:-1], next(it))
            last[0] = tuple(size)[-1]
            return randint(low, high, size, **kw)  # type: ignore[call-overload]

        def arange_(*a: object, **kw: object) -> torch.Tensor:
            return arange(last[0], **kw) if a == (2048,) else arange(*a, **kw)  # type: ignore[call-overload]

        def expand_(self: torch.Tensor, *sizes: int) -> torch.Tensor:
            if len(sizes) == 2 and sizes[1] == 2048 and self.dim() == 1 and self.shape[0] != 2048:
                sizes = (sizes[0], self.shape[0])
            return expand(self, *sizes)

        torch.randint, torch.arange, torch.Tensor.expand = randint_, arange_, expand_  # type: ignore[assignment]
        try:
            yield
        finally:
            torch.randint, torch.arange, torch.Tensor.expand = randint, arange, expand  # type: ignore[assignment]

    for name in ("loop", "trl"):
        for label, order in (("variable", ORDER), ("fixed", [2048] * len(ORDER))):
            with lengths(order):
                if name == "trl":
                    r = trl_sft.trace_sft("qwen2.5-0.5b", setup, steps=2)
                else:
                    r = run.trace("qwen2.5-0.5b", setup, steps=2, keep_timeline=False)
            print(
                f"{name:5} {label:9} traced {r.peak_bytes / gib:.2f} GiB, replayed reserved"
                f" {(r.simulated_reserved_bytes or 0) / gib:.2f}, needed {(r.simulated_needed_bytes or 0) / gib:.2f}",
                flush=True,
            )
    return 0


def row_segments(row_id: str, least: int = 100 << 20) -> int:
    """Trace a one-process row of tables/measured/reports.csv for two steps, replay it, and print
    every new segment of at least ``least`` bytes with the storage that asked for it (step,
    phase, op, shape, dtype), then the replay's peaks beside the plan's tiers and the measured."""
    import csv
    from pathlib import Path

    from vramplan.published import row_estimate
    from vramplan.row_setup import row_setup
    from vramplan.trace import allocator, counter, run

    base = Path(__file__).resolve().parents[1] / "tables" / "measured"
    with (base / "reports.csv").open(newline="") as fh:
        row = next((r for r in csv.DictReader(fh) if r["id"] == row_id), None)
    if row is None:
        print(f"no row {row_id!r} in tables/measured/reports.csv")
        return 2
    setup = row_setup(row)
    made: dict[int, tuple[object, ...]] = {}  # a storage's key -> who made it (the last, keys are reused)
    track = counter.Counter.track

    def labelled(self: counter.Counter, tensor: object, creator: str, op: str = "") -> None:
        key = id(tensor.untyped_storage())  # type: ignore[attr-defined]
        if key not in self.live:
            made[key] = (self.step, self.phase, op, tuple(tensor.shape), str(tensor.dtype).removeprefix("torch."))  # type: ignore[attr-defined]
        track(self, tensor, creator, op)

    events: list[list[tuple[int, int]]] = []
    replay = run.replay
    counter.Counter.track = labelled  # type: ignore[method-assign]
    run.replay = lambda ev: events.append(ev) or replay(ev)  # type: ignore[assignment]
    try:
        traced = run.trace(row["model"], setup, steps=2, keep_timeline=False)
    finally:
        counter.Counter.track, run.replay = track, replay  # type: ignore[method-assign]
    gib = 2**30
    alloc = allocator.CachingAllocator()
    labels: dict[int, tuple[object, ...]] = {}
    for key, nbytes in events[0]:
        if nbytes < 0:
            alloc.free(key)
            continue
        labels[key] = made.get(key, ("?",))
        before = alloc.reserved
        alloc.malloc(key, nbytes)
        if alloc.reserved - before >= least:
            print(
                f"new segment {(alloc.reserved - before) / gib:5.2f} GiB -> reserved {alloc.reserved / gib:6.2f},"
                f" allocated {alloc.allocated / gib:6.2f}  {labels[key]}"
            )
    est = row_estimate(row, base)
    print(
        f"traced allocated {traced.peak_bytes / gib:.2f}, replayed reserved {alloc.peak_reserved / gib:.2f},"
        f" needed {alloc.peak_needed / gib:.2f} GiB; plan allocated {est.allocated_bytes / gib:.2f}, reserved"
        f" {est.reserved_bytes / gib:.2f}, device {est.device_bytes / gib:.2f}, needed {est.needed_bytes / gib:.2f};"
        f" measured {row['measured_value']} {row['measured_unit']} ({row['measurement']})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
