"""The plan's peak by phase, as the terminal shows it: every phase in the order a run meets it,
its GiB, and the peak marked."""

from __future__ import annotations

from rich.console import Console

from vramplan import plan
from vramplan.render_phases import ORDER, phases_table


def _text(table) -> str:
    console = Console(width=160, record=True)
    console.print(table)
    return console.export_text()


def test_every_phase_in_run_order_with_the_peak_marked() -> None:
    p = plan("qwen2.5-7b", "4090")
    text = _text(phases_table(p))
    rows = [line for line in text.splitlines() if line.startswith("│")]
    named = [r.split("│")[1].strip() for r in rows if r.split("│")[1].strip()]
    assert named == sorted(p.phases, key=ORDER.index)
    peak = next(r for r in rows if r.split("│")[1].strip() == p.peak.phase)
    assert "<- the peak" in peak and f"{p.phases[p.peak.phase] / 2**30:,.2f}" in peak
    assert text.count("<- the peak") == 1


def test_grpo_phases_follow_the_step() -> None:
    p = plan("qwen2.5-0.5b", "a100-80g", rl="grpo")
    text = _text(phases_table(p))
    assert text.index("optimizer_step") < text.index("generate")
