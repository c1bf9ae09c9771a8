"""DeepSpeed's own ZeRO-2 engine on one CPU rank (gloo) against vramplan/memory/zero.py: the reduce
buckets scale with reduce_bucket_size and overlap_comm, and the step holds what step_terms counts
(benchmarks/zero_buffers.py runs the two-rank grid; benchmarks/zero_buffers.md holds it)."""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from pathlib import Path

import pytest

from tests.conftest import requires
from vramplan.memory.zero import reduce_bucket_bytes, step_terms
from vramplan.models import load_model
from vramplan.setup import make_setup

pytestmark = [pytest.mark.trace, requires("torch", "transformers", "deepspeed")]

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import zero_buffers  # noqa: E402

BUCKET = 200_000


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def runs() -> dict[bool, dict[str, int]]:
    import torch.distributed as dist

    out = {}
    port = _port()
    saved = dict(os.environ)
    try:  # one process group for both engines (DeepSpeed keeps its groups until the end)
        for overlap in (False, True):
            args = argparse.Namespace(stage=2, bucket=BUCKET, overlap=overlap, accum=1, reuse=10**9, dump=False)
            out[overlap] = zero_buffers.run_rank(0, 1, port, args)["marks"]
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        os.environ.clear()  # run_rank sets RANK, WORLD_SIZE, MASTER_ADDR/PORT for torch.distributed
        os.environ.update(saved)
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("tiny") / "config.json"
    path.write_text(json.dumps(zero_buffers.model_config()))
    return load_model(str(path), hub=False)


def _setup(overlap: bool):
    ds = {"zero_optimization": {"stage": 2, "overlap_comm": overlap, "reduce_bucket_size": BUCKET}}
    return make_setup(method="full", precision="bf16", num_gpus=2, parallel="zero2", deepspeed_config=ds)


def test_overlap_comm_adds_one_bucket(runs, tiny) -> None:
    added = runs[True]["backward_peak1"] - runs[False]["backward_peak1"]
    counted = reduce_bucket_bytes(tiny, _setup(True)) - reduce_bucket_bytes(tiny, _setup(False))
    assert added == counted == 2 * BUCKET


def test_the_step_holds_what_is_counted(runs, tiny) -> None:
    """One rank holds the whole partition: the step's peak above the state is step_terms' sum
    (the 16-bit gradient, its flat copy and the fp32 gradient), within the rounding of the
    parameters that straddle nothing on one rank."""
    m = runs[False]
    measured = m["step_peak1"] - m["after_step1"]
    one = make_setup(
        method="full",
        precision="bf16",
        deepspeed_config={"zero_optimization": {"stage": 2, "reduce_bucket_size": BUCKET}},
        num_gpus=2,
        parallel="zero2",
    )
    counted = sum(step_terms(tiny, one.model_copy(update={"num_gpus": 1})).values())
    assert abs(measured - counted) <= 0.01 * counted
