"""A stand-in training script for `vramplan measure` tests: TRL's SFTTrainer shape over the
stand-in torch (torch/cuda.py), with known sizes in MiB.

Load: WEIGHTS (+100 MiB per LOCAL_RANK). Each optimizer step: ACTS allocated and freed, the
optimizer's states OPT allocated at the first step and kept, then ``Optimizer.step``.
Evaluation holds EVAL, saving SAVE. ``--oom-at-step N`` asks for 30 GiB at step N; ``--hang`` prints
``hanging PID`` after training and sleeps until killed; ``--loop`` runs the steps without a
Trainer."""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch
from trl import SFTTrainer

MIB = 1 << 20
#: MiB: weights, activations of a step, optimizer states, evaluation, saving
WEIGHTS, ACTS, OPT, EVAL, SAVE = 1000, 500, 200, 300, 100


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--oom-at-step", type=int, default=0)
    p.add_argument("--hang", action="store_true")
    p.add_argument("--loop", action="store_true")
    args = p.parse_args()
    rank = int(os.environ.get("LOCAL_RANK", "0"))
    torch.cuda.set_device(rank)
    torch.cuda.malloc((WEIGHTS + 100 * rank) * MIB)
    opt = torch.optim.Optimizer()
    state = {"optimizer": False}

    def step(n: int) -> None:
        if n == args.oom_at_step:
            torch.cuda.malloc(30 << 30)
        torch.cuda.malloc(ACTS * MIB)
        torch.cuda.free(ACTS * MIB)
        if not state["optimizer"]:
            torch.cuda.malloc(OPT * MIB)
            state["optimizer"] = True
        opt.step()

    class Trainer(SFTTrainer):
        def step(self, n: int) -> None:
            step(n)

        def evaluate(self) -> dict[str, float]:
            torch.cuda.malloc(EVAL * MIB)
            torch.cuda.free(EVAL * MIB)
            return super().evaluate()

        def save_model(self, output_dir: str | None = None) -> None:
            torch.cuda.malloc(SAVE * MIB)
            torch.cuda.free(SAVE * MIB)

    if args.loop:
        for n in range(1, args.steps + 1):
            step(n)
    else:
        Trainer(args.steps, eval_every=2, save_every=3).train()
    if args.hang:
        print(f"hanging {os.getpid()}", flush=True)
        time.sleep(120)
    print("trained", flush=True)


if __name__ == "__main__":
    sys.exit(main())
