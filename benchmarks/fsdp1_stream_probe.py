"""Run torch's own FSDP1 (``FullyShardedDataParallel``, FULL_SHARD, BACKWARD_PRE, use_orig_params,
the decoder layers wrapped) for two steps of a tiny bf16 Mistral on two CPU processes (gloo), and
report on which of FSDP1's streams each unsharded flat parameter and each sharded gradient is
allocated, where the gradients the optimizer reads live, and when AdamW makes its state. On the
CPU the streams do nothing, but FSDP1 enters the same ``state._device_handle.stream(...)``
contexts as on a GPU, so the order and the stream each allocation is made under do not depend on
the device (benchmarks/fsdp1.md).

    python benchmarks/fsdp1_stream_probe.py     # prints one JSON line (rank 0)
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
from collections import Counter
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _worker(rank: int, port: int, out: Any) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    from torch.distributed.fsdp import BackwardPrefetch, ShardingStrategy
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.fsdp import _flat_param as fp
    from torch.distributed.fsdp import _runtime_utils as ru
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy
    from transformers import MistralConfig, MistralForCausalLM
    from transformers.models.mistral.modeling_mistral import MistralDecoderLayer

    torch.manual_seed(0)
    cfg = MistralConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=128,
    )
    m = FSDP(
        MistralForCausalLM(cfg).to(torch.bfloat16),
        auto_wrap_policy=ModuleWrapPolicy({MistralDecoderLayer}),
        sharding_strategy=ShardingStrategy.FULL_SHARD,
        backward_prefetch=BackwardPrefetch.BACKWARD_PRE,
        use_orig_params=True,
        device_id=torch.device("cpu"),
    )
    ru._lazy_init(m, m)  # makes the streams the first forward would
    names = {id(m._post_backward_stream): "post_backward", id(m._unshard_stream): "unshard"}
    current = ["default"]
    enter = m._device_handle.stream

    @contextlib.contextmanager
    def tagged(stream: Any) -> Iterator[None]:
        before, current[0] = current[0], names.get(id(stream), "other")
        try:
            with enter(stream):
                yield
        finally:
            current[0] = before

    for state in FSDP.fsdp_modules(m):
        state._device_handle.stream = tagged
    made: dict[int, str] = {}
    counts: Counter[str] = Counter()
    reduce_scatter_tensors = ru._get_reduce_scatter_tensors

    def probe(state: Any, grad: torch.Tensor) -> Any:
        padded, new = reduce_scatter_tensors(state, grad)
        made[new.untyped_storage().data_ptr()] = current[0]
        counts[f"new_sharded_grad@{current[0]}"] += 1
        return padded, new

    ru._get_reduce_scatter_tensors = probe
    alloc = fp.FlatParamHandle._alloc_padded_unsharded_flat_param

    def gathered(self: Any) -> Any:
        counts[f"unsharded_flat_param@{current[0]}"] += 1
        return alloc(self)

    fp.FlatParamHandle._alloc_padded_unsharded_flat_param = gathered  # type: ignore[method-assign]
    opt = torch.optim.AdamW(m.parameters(), lr=1e-4, foreach=True)
    ids = torch.randint(0, 128, (2, 16))
    steps = []
    for _ in range(2):
        before = len(opt.state)
        m(input_ids=ids, labels=ids).loss.backward()
        grads = [p.grad for p in m.parameters() if p.grad is not None]
        homes = sorted({made.get(g.untyped_storage().data_ptr(), "elsewhere") for g in grads})
        opt.step()
        steps.append({"state_before": before, "state_after": len(opt.state), "grads_in": homes})
        m.zero_grad()
    if rank == 0:
        out.put({"torch": torch.__version__, "allocations": dict(counts), "steps": steps})
    dist.destroy_process_group()


def probe() -> dict[str, Any]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    out = ctx.SimpleQueue()
    mp.start_processes(_worker, args=(port, out), nprocs=2, start_method="spawn")
    return out.get()


if __name__ == "__main__":
    json.dump(probe(), sys.stdout)
    print()
