"""FSDP2 rank-0 traces (fake process group, vramplan/trace/fsdp.py) against the estimate,
phase by phase: python3 benchmarks/fsdp_trace.py [MODEL]."""

from __future__ import annotations

import sys
import warnings

CASES = {
    "full bf16, 2 ranks": dict(method="full", precision="bf16", num_gpus=2),
    "full bf16, 4 ranks": dict(method="full", precision="bf16", num_gpus=4),
    "lora all-linear, 2 ranks": dict(method="lora", num_gpus=2),
    "lora all-linear, 4 ranks": dict(method="lora", num_gpus=4),
}


def main() -> None:
    warnings.filterwarnings("ignore")
    from vramplan.memory import estimate
    from vramplan.memory.phases import traceable_by_phase
    from vramplan.models import load_model
    from vramplan.setup import make_setup
    from vramplan.trace.fsdp import trace_fsdp

    model = sys.argv[1] if len(sys.argv) > 1 else "qwen2.5-0.5b"
    mib = 2**20
    print(f"| {model}, seq 256, checkpointing | phase | traced MiB | estimate MiB | error |")
    print("|---|---|---:|---:|---:|")
    for name, kw in CASES.items():
        setup = make_setup(seq_len=256, micro_batch=1, grad_checkpointing=True, parallel="fsdp", **kw)
        result = trace_fsdp(model, setup)
        mine = traceable_by_phase(estimate(load_model(model), setup))
        for phase, value in mine.items():
            got = result.phases[f"step1/{phase}"]
            print(f"| {name} | {phase} | {got / mib:.1f} | {value / mib:.1f} | {100 * (value - got) / got:+.2f}% |")


if __name__ == "__main__":
    main()
