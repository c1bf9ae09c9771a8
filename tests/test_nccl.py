"""NCCL's buffers outside torch's allocator (memory/overhead.py ``nccl_bytes``): one communicator a
process under DDP, ZeRO and FSDP, counted on NVLink boards (tables/overheads.json, NVIDIA/nccl#964),
on the device tier and in what the card must offer."""

from __future__ import annotations

import pytest

from vramplan import plan
from vramplan.gpus import resolve_gpu
from vramplan.memory import overhead

MIB = 2**20


@pytest.mark.parametrize(("gpus", "mib"), [(2, 544), (4, 688), (8, 688)])
def test_a_data_parallel_group_on_nvlink_holds_the_measured_buffers(gpus: int, mib: int) -> None:
    p = plan("qwen2.5-7b", gpu="a100-80g", method="lora", num_gpus=gpus, parallel="ddp")
    assert p.terms[overhead.NCCL_TERM] == mib * MIB
    alone = plan("qwen2.5-7b", gpu="a100-80g", method="lora")
    assert overhead.NCCL_TERM not in alone.terms  # one process: no communicator
    # outside the allocator: on the device tier only, and the card must offer it
    assert p.peak.device_bytes - p.peak.reserved_bytes == mib * MIB + alone.terms["overhead/cuda_context"]
    assert p.peak.needed_bytes == p.peak.device_bytes


def test_pcie_cards_and_one_process_layouts_count_none() -> None:
    assert resolve_gpu("a100-80g").nvlink and resolve_gpu("h100").nvlink
    assert not resolve_gpu("4090").nvlink and not resolve_gpu("a100-pcie-80gb").nvlink
    pcie = plan("qwen2.5-7b", gpu="4090", method="qlora", quant="bnb-nf4", num_gpus=2, parallel="ddp")
    assert overhead.NCCL_TERM not in pcie.terms
    split = plan("qwen2.5-7b", gpu="a100-80g", method="lora", num_gpus=2, parallel="device_map")
    assert overhead.NCCL_TERM not in split.terms  # device_map is one process
