"""The plan's peak by phase as a small timeline: one row a phase, in the order a run meets them,
its allocated peak as a bar against the card, and the phase that sets the peak marked."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.table import Table
from rich.text import Text

from vramplan import glossary

if TYPE_CHECKING:
    from vramplan.results import Plan

#: the order a run meets its phases in (any phase not listed follows, in the plan's order)
ORDER = (
    "load",
    "vision_forward",
    "forward_layer",
    "forward_end",
    "backward_start",
    "backward",
    "optimizer_step",
    "generate",
    "reference",
    "old_logprobs",
    "evaluate",
    "save",
)
BAR_CELLS = 24


def phases_table(plan: Plan) -> Table:
    """Each phase's allocated peak (GiB), a bar scaled to the card, and when the phase is."""
    order = {name: i for i, name in enumerate(ORDER)}
    names = sorted(plan.phases, key=lambda n: (order.get(n, len(ORDER)), list(plan.phases).index(n)))
    scale = max([plan.gpu.memory_bytes, *plan.phases.values()])
    table = Table(title="peak by phase (allocated; the bar is against the card)", title_justify="left")
    table.add_column("phase")
    table.add_column("GiB", justify="right")
    table.add_column("", no_wrap=True)
    table.add_column("when")
    for name in names:
        value = plan.phases[name]
        cells = round(BAR_CELLS * value / scale) if scale else 0
        peak = name == plan.peak.phase
        bar = Text("█" * cells + "·" * (BAR_CELLS - cells), style="bold" if peak else "dim")
        when = glossary.phase(name) + ("  <- the peak" if peak else "")
        table.add_row(name, f"{value / 2**30:,.2f}", bar, when, style="bold" if peak else None)
    return table
