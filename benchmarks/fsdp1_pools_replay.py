"""Replay FSDP1's allocations for rank 0 of a 2-rank Mistral-7B full fine-tuning step (the
fms-acceleration rows fms-a100-r11/r13) through torch's caching-allocator rules, one cache per
stream (vramplan/trace/allocator.py; CUDACachingAllocator.cpp: blocks are reused on their own
stream only), over three steps, and print each stream's reserved bytes beside the pool model of
vramplan/memory/fsdp.py.

The order of allocations and frees is written from the code, not traced: FSDP1 at torch 2.4
(_runtime_utils.py: ``_unshard`` on the unshard stream, rate-limited to two gathered units;
``_post_backward_hook``: the layer's unsharded gradient made by autograd on the compute stream,
the sharded one (``new_sharded_grad``) on the post-backward stream, the unsharded one freed with
``record_stream`` on the post-backward stream, modelled as freed one layer later), HF Trainer 4.48
(checkpointed decoder layers: each layer's input kept, the layer recomputed in backward; the loss
chain of memory/loss.py; ``optimizer.step()`` then ``model.zero_grad()``), torch 2.4's foreach
AdamW (``_init_group`` makes ``exp_avg`` and ``exp_avg_sq`` for every parameter at the first step;
``_multi_tensor_adamw`` makes one temporary per parameter, ``torch._foreach_sqrt(exp_avg_sqs)``)
with use_orig_params (one state tensor per original parameter's shard). Tensor sizes inside a
layer are Mistral's (hidden 4096, intermediate 14336, 8 KV heads of 128); a layer's transient
tensors in forward and backward are approximations of what its kernels make.

    python benchmarks/fsdp1_pools_replay.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vramplan.trace.allocator import CachingAllocator  # noqa: E402

GIB = 2**30
H, FF, KV, V, L, S = 4096, 14336, 1024, 32000, 32, 4096
B2 = 2  # bf16
WORLD = 2


def layer_params() -> list[int]:
    """Numels in FSDP1's flattening order (named_parameters of MistralDecoderLayer)."""
    return [H * H, H * KV, H * KV, H * H, H * FF, H * FF, FF * H, H, H]


def rank0_shard(numels: list[int]) -> list[int]:
    """The original parameters' pieces in rank 0's half of the flat parameter."""
    half = -(-sum(numels) // WORLD)
    out, seen = [], 0
    for n in numels:
        take = max(0, min(n, half - seen))
        if take:
            out.append(take)
        seen += n
    return out


class Run:
    """The allocator's caches by stream; ``streams=False`` sends everything to one stream (what a
    single-stream run would hold for the same order)."""

    def __init__(self, streams: bool = True) -> None:
        self.pools = {name: CachingAllocator() for name in ("compute", "unshard", "post_backward")}
        self.key = 0
        self.streams = streams
        #: the most allocated, and the most in segments holding a live block (what a card must
        #: offer: a cudaMalloc that fails frees every stream's wholly free segments and retries)
        self.peak_allocated = 0
        self.peak_needed = 0

    def malloc(self, nbytes: int, pool: str | None = None) -> tuple[str, int]:
        self.key += 1
        p = pool if pool and self.streams else "compute"
        self.pools[p].malloc(self.key, nbytes)
        caches = self.pools.values()
        self.peak_allocated = max(self.peak_allocated, sum(a.allocated for a in caches))
        self.peak_needed = max(self.peak_needed, sum(a.reserved - a.whole_free for a in caches))
        return (p, self.key)

    def free(self, *handles: tuple[str, int]) -> None:
        for p, k in handles:
            self.pools[p].free(k)


def step(run: Run, mb: int, state: list, first: bool) -> None:
    t = mb * S
    layer = layer_params()
    unsharded = B2 * sum(layer)
    shard_pieces = rank0_shard(layer)
    root = [V * H, H, V * H]
    root_pieces = rank0_shard(root)
    gathered: list[tuple[str, int]] = []

    def unshard(nbytes: int) -> tuple[str, int]:
        while len(gathered) >= 2:  # limit_all_gathers: two units in flight
            run.free(gathered.pop(0))
        h = run.malloc(nbytes, "unshard")
        gathered.append(h)
        return h

    # forward: the root unit is gathered first and stays gathered (FSDP1's root)
    root_full = run.malloc(B2 * sum(root), "unshard")
    hidden = run.malloc(t * H * B2)  # embedding output
    kept = []
    for _ in range(L):
        unshard(unsharded)
        kept.append(hidden)  # checkpoint: the layer's input
        trans = [run.malloc(t * n * B2) for n in (H, H, KV, KV, H, H, H, FF, FF, FF, FF)]
        out = run.malloc(t * H * B2)
        run.free(*trans)
        hidden = out
    norm = run.malloc(t * H * B2)
    logits = run.malloc(t * V * B2)
    copy = run.malloc(t * V * 4)
    logsm = run.malloc(t * V * 4)
    run.free(logits, copy)
    # backward: the loss chain (memory/loss.py), the head, then the layers from the top
    nll = run.malloc(t * V * 4)
    lsb = run.malloc(t * V * 4)
    run.free(logsm, nll)
    glogits = run.malloc(t * V * B2)
    run.free(lsb)
    ghidden = run.malloc(t * H * B2)
    root_grad = run.malloc(B2 * sum(root))  # the root's gradient, whole until its post-backward
    run.free(glogits, norm, hidden)
    pending = None
    grads = []
    for _ in range(L):
        unshard(unsharded)
        inp = kept.pop()
        saved = [run.malloc(t * n * B2) for n in (H, H, KV, KV, H, H, H, FF, FF, FF, FF)]
        gtrans = [run.malloc(t * n * B2) for n in (FF, FF, H, H)]
        pgrads = [run.malloc(B2 * n) for n in layer]
        flat = run.malloc(unsharded)  # autograd's unsharded gradient of the flat parameter
        run.free(*pgrads, *gtrans, *saved)
        gin = run.malloc(t * H * B2)
        run.free(ghidden, inp)
        ghidden = gin
        grads.append(run.malloc(-(-unsharded // WORLD), "post_backward"))
        if pending is not None:  # recorded on the post-backward stream: reusable a layer later
            run.free(pending)
        pending = flat
    run.free(pending, ghidden)
    grads.append(run.malloc(-(-B2 * sum(root) // WORLD), "post_backward"))
    run.free(root_grad, root_full, *gathered)
    gathered.clear()
    # optimizer.step(): AdamW's state at the first step, then one temporary per parameter
    pieces = [n for _ in range(L) for n in shard_pieces] + root_pieces
    if first:
        state.extend(run.malloc(B2 * n) for n in pieces for _ in (0, 1))
    temps = [run.malloc(B2 * n) for n in pieces]
    run.free(*temps)
    run.free(*grads)  # model.zero_grad(): set_to_none


def replay(mb: int, steps: int = 3, streams: bool = True, lazy_state: bool = True) -> dict[str, int]:
    """Peak reserved bytes of each stream's cache after ``steps`` steps at micro-batch ``mb``;
    ``lazy_state=False`` makes AdamW's state before the first step instead of in it."""
    return {name: a.peak_reserved for name, a in run_steps(mb, steps, streams, lazy_state).pools.items()}


def run_steps(mb: int, steps: int = 3, streams: bool = True, lazy_state: bool = True) -> Run:
    run = Run(streams)
    layer = layer_params()
    pieces = [n for _ in range(L) for n in rank0_shard(layer)] + rank0_shard([V * H, H, V * H])
    for n in pieces:  # the sharded parameters (use_orig_params views of flat shards)
        run.malloc(B2 * n)
    state: list = [] if lazy_state else [run.malloc(B2 * n) for n in pieces for _ in (0, 1)]
    for i in range(steps):
        step(run, mb, state, first=lazy_state and i == 0)
    return run


def main() -> None:
    for mb, measured in ((2, 43.34), (4, 52.33)):
        pools = replay(mb)
        shown = ", ".join(f"{k} {v / GIB:.2f}" for k, v in pools.items())
        one = sum(replay(mb, streams=False).values()) / GIB
        ahead = sum(replay(mb, lazy_state=False).values()) / GIB
        run = run_steps(mb)
        print(
            f"mb {mb}: reserved {sum(pools.values()) / GIB:.2f} GiB ({shown}); one stream {one:.2f};"
            f" AdamW state made before the first step {ahead:.2f}; allocated {run.peak_allocated / GIB:.2f},"
            f" needed {run.peak_needed / GIB:.2f}; nvidia-smi measured {measured}"
        )


if __name__ == "__main__":
    main()
