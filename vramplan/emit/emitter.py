"""``emit(plan, target)``: the target's refusals, its adapted Setup re-estimated with its
trainer's policy, the reasons with numbers, and its files."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict

from vramplan import verdict
from vramplan.errors import DoesNotFit, VramplanError
from vramplan.frameworks import TARGETS, framework
from vramplan.frameworks.base import PLAN_REFUSALS
from vramplan.frameworks.files.common import Context, gib, model_path
from vramplan.frameworks.files.escape import check_module_names, check_text
from vramplan.frameworks.files.reasons import reasons
from vramplan.memory import estimate
from vramplan.models import load_model
from vramplan.setup import Setup

if TYPE_CHECKING:
    from vramplan.planner import Plan


class Emitted(BaseModel):
    """The files of one target (name -> text), the command that starts the run, the Setup
    they encode and what had to change for the target."""

    model_config = ConfigDict(frozen=True)
    target: str
    files: dict[str, str]
    command: str
    setup: Setup
    adjustments: list[str]
    fits: bool
    device_bytes: int
    allocated_bytes: int


def _check_values(plan: Plan, data: str) -> None:
    """Refuse what no emitted format can hold, naming the field (see :func:`check_text`)."""
    check_text("model", plan.model)
    check_text("model", plan.source)
    check_text("data", data)
    s = plan.setup
    targets = s.lora_target_list() if s.is_lora else None
    if targets is not None:
        check_module_names("lora_targets", targets)
    for field, value in s.model_dump().items():
        if isinstance(value, float) and not math.isfinite(value):
            raise VramplanError(field, f"{value} is not a finite number: no trainer option takes it")


def emit(plan: Plan, target: str, *, data: str = "data.jsonl", force: bool = False) -> Emitted:
    """Render ``plan`` for ``target``: refused as the target's framework refuses it (the plan's
    own refusals before the values are checked, the model's and the layout's after), else
    its Setup adapted and re-estimated with the framework's policy."""
    if target not in TARGETS:
        raise VramplanError("emit", f"unknown target {target!r}; targets: {', '.join(TARGETS)}")
    fw = framework(target)
    spec = load_model(plan.source or plan.model)
    refusals = fw.supports(plan.setup, spec)
    for refusal in refusals:
        if refusal.code in PLAN_REFUSALS:
            raise refusal.error()
    _check_values(plan, data)
    if refusals:
        raise refusals[0].error()
    setup, adjustments = fw.adapt(plan.setup, spec)
    if plan.trainer != target:
        adjustments = [
            f"planned for {plan.trainer}; these files run {target}: re-estimated as {target} runs it",
            *adjustments,
        ]
    policy = fw.policy(setup)
    est = estimate(spec, setup, policy=policy, card_bytes=plan.gpu.memory_bytes, nvlink=plan.gpu.nvlink)
    fits = verdict.needed(est) <= plan.gpu.memory_bytes
    ctx = Context(
        model_name=plan.model,
        model_path=model_path(plan.model, plan.source),
        spec=spec,
        gpu=plan.gpu,
        setup=setup,
        policy=policy,
        est=est,
        reasons=reasons(spec, setup, est, plan.gpu, fw.policy),
        adjustments=adjustments,
        data=data,
    )
    files, command = fw.render(ctx)  # an option the target cannot write is refused first, naming its field
    if not fits and not force:
        raise DoesNotFit(
            "emit",
            f"the plan does not fit {plan.gpu.name}: needs {gib(est.device_bytes)} of {gib(plan.gpu.memory_bytes)}"
            f" ({gib(est.device_bytes - plan.gpu.memory_bytes)} over); pass --force to emit it anyway",
        )
    return Emitted(
        target=target,
        files=files,
        command=command,
        setup=setup,
        adjustments=adjustments,
        fits=fits,
        device_bytes=est.device_bytes,
        allocated_bytes=est.allocated_bytes,
    )
