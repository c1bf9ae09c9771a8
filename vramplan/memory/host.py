"""Host RAM that CPU offload needs, per node.

DeepSpeed ZeRO-Offload (``offload_optimizer: cpu``) keeps each rank's optimizer partition on
the CPU: fp32 Adam moments (8 B), the fp32 master weights (4 B) and the fp32 gradient
partition the CPU Adam reads (4 B), 16 B per trainable parameter (ZeRO-Offload paper, Ren et
al. 2021, section 3; DeepSpeed ``DeepSpeedCPUAdam``). ``offload_param: cpu`` (ZeRO-3) adds
the 16-bit parameter partition, frozen ones included. FSDP ``CPUOffload(offload_params=True)``
keeps the sharded parameters in their dtype, their gradients and the optimizer state on the
CPU. With ``pin_memory`` (DeepSpeed's and FSDP's default for these buffers) all of it is
page-locked: the operating system cannot swap it, so it must fit in physical RAM.

A node holds the partitions of its own ranks: the totals divided by the node count.
Not counted: the process's own RAM (Python, CUDA host allocations, the dataloader) and the
checkpoint being read at load time.
"""

from __future__ import annotations

from vramplan.memory.policy import policy_of
from vramplan.memory.trainable import trainable_params
from vramplan.params import param_counts
from vramplan.setup import DEEPSPEED, Setup
from vramplan.spec import ModelSpec
from vramplan.units import nbytes

#: DeepSpeed CPU Adam per trainable parameter: fp32 m and v, fp32 master, fp32 gradient.
DEEPSPEED_OFFLOAD_BYTES_PER_PARAM = 16


def host_terms(spec: ModelSpec, setup: Setup) -> dict[str, int]:
    """Offloaded bytes on one node's host RAM, by what they are (empty without offload)."""
    if setup.offload == "none":
        return {}
    nodes = setup.num_nodes
    trainable = trainable_params(spec, setup)
    total = param_counts(spec).total
    out: dict[str, int] = {}
    if setup.parallel in DEEPSPEED:
        out["host/optimizer_state"] = DEEPSPEED_OFFLOAD_BYTES_PER_PARAM * trainable // nodes
        if setup.offload == "optimizer+params":
            out["host/params"] = nbytes(total, "bf16") // nodes
        return out
    # FSDP CPU offload: sharded parameters in their dtype, gradients, Adam's two moments
    d = policy_of(setup)
    out["host/params"] = nbytes(total, d.weights) // nodes
    out["host/gradients"] = nbytes(trainable, d.grads) // nodes
    out["host/optimizer_state"] = 2 * nbytes(trainable, d.states) // nodes
    return out
