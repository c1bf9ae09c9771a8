"""A toy trainer: the generic loop but with its LoRA adapters kept in bf16 (as TRL does for
QLoRA, issue 18), to show that a trainer is one module and one ``register`` call."""

from __future__ import annotations

from vramplan.frameworks import Framework, register
from vramplan.policy import Policy, default_policy
from vramplan.setup import Setup


class ToyTrainer(Framework):
    name = "toy"
    title = "a toy trainer with bf16 LoRA adapters"

    def policy(self, setup: Setup) -> Policy:
        return default_policy(setup).model_copy(update={"adapter": "bf16"})


register(ToyTrainer())
