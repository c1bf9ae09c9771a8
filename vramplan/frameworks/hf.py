"""The plain transformers ``Trainer`` loop: what today's estimates describe (autocast through
accelerate, PEFT's adapters and k-bit preparation, the full-logits loss, fixed-length
batches). It is planned for, not emitted: a user's own script sets it up."""

from __future__ import annotations

from typing import TYPE_CHECKING

from vramplan.errors import VramplanError
from vramplan.frameworks.base import Framework, Refusal, register
from vramplan.setup import PARALLELS, Setup
from vramplan.spec import ModelSpec

if TYPE_CHECKING:
    from vramplan.frameworks.files.common import Context


class HfTrainer(Framework):
    name = "hf"
    title = "transformers Trainer (your own script)"
    package = "transformers"
    established = "5.25"
    images = True
    moe_all_linear = True
    vision_models = True
    layouts = PARALLELS

    def supports(self, setup: Setup, spec: ModelSpec) -> list[Refusal]:
        """Every setup the planner plans but GRPO (TRL's GRPOTrainer): the estimates describe this loop."""
        if setup.rl != "none":
            return [Refusal(field="rl", code="grpo", text="hf: GRPO runs in TRL's GRPOTrainer: plan it for trl")]
        return []

    def render(self, ctx: Context) -> tuple[dict[str, str], str]:
        targets = "trl, swift, llamafactory or axolotl"
        raise VramplanError("emit", f"hf: the plain transformers Trainer runs your own script; emit for {targets}")


register(HfTrainer())
