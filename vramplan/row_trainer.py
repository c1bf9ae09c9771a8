"""Which trainer ran a measured row (the ``trainer`` and ``trainer_version`` columns of the
published-measurements schema, published.py) and whose policy estimates it. Torch-free."""

from __future__ import annotations

from vramplan.errors import closest, shown
from vramplan.frameworks import names

#: programs a published row may come from that vramplan has no policy for, and what they run
#: instead of a transformers model's own step (a row naming one is excluded, never estimated
#: under another trainer's policy)
NO_POLICY = {
    "torchtune": "torchtune's own recipes and model code (torchtune.modules), not transformers' models",
    "unsloth": "Unsloth's patched model forward and its own kernels (fused LoRA MLP, chunked cross-entropy)",
}


def row_trainer(row: dict[str, str]) -> str:
    """The trainer whose policy estimates ``row``: its ``trainer`` column, blank meaning ``hf``
    (the plain transformers Trainer loop)."""
    return (row.get("trainer") or "").strip() or "hf"


def policy_trainer(row: dict[str, str]) -> str:
    """The trainer whose policy describes the step ``row`` measured: its own, except TRL before
    1.0 (``trainer_version`` 0 or 0.x), whose SFTTrainer is the transformers Trainer's step:
    trl 0.9.6 ``trl/trainer/sft_trainer.py`` ``class SFTTrainer(Trainer)`` defines no
    ``compute_loss``, so the model returns full logits and its own loss, as under ``hf`` (the
    fused LM head the trl policy counts came with TRL 1.x)."""
    name = row_trainer(row)
    version = (row.get("trainer_version") or "").strip()
    if name == "trl" and (version == "0" or version.startswith("0.")):
        return "hf"
    return name


def trainer_problem(row: dict[str, str]) -> tuple[str, str] | None:
    """Why ``row`` cannot be estimated for the program that produced it, as (code, reason), or
    None when it can: a program vramplan has no policy for, or a name it does not know."""
    name = row_trainer(row)
    if name in names():
        return None
    known = ", ".join(names())
    if name.lower() in NO_POLICY:
        return (
            "no trainer policy",
            f"trainer {name}: no policy for it ({NO_POLICY[name.lower()]}); policies exist for {known}",
        )
    hint = closest(name, [*names(), *NO_POLICY])
    near = f"; closest: {', '.join(hint)}" if hint else ""
    return ("unknown trainer", f"unknown trainer {shown(name)}{near}; trainers with a policy: {known}")
