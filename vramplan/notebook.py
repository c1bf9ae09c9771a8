"""A plan in a notebook (``Plan._repr_html_``): the verdict, the peak by term against the card
as a chart, the terms explained, the alternatives weighed and the advice, in one HTML block.
Plain HTML and inline SVG; nothing is fetched. Torch-free."""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

from vramplan import glossary
from vramplan.units import GIB

if TYPE_CHECKING:
    from vramplan.results import Plan

#: the alternatives the view lists (the chosen one first, then in the planner's order)
SHOWN_ALTERNATIVES = 8
VERDICT_COLOURS = {"fits": "green", "tight": "#b58900", "does not fit": "#c0392b"}


def _gib(n: int) -> str:
    return f"{n / GIB:,.2f}"


def _verdict(plan: Plan) -> str:
    colour = VERDICT_COLOURS[plan.verdict]
    if plan.verdict == "does not fit":
        how = f"{_gib(-plan.headroom_bytes)} GiB over"
    elif plan.verdict == "tight":
        how = f"{_gib(plan.headroom_bytes)} GiB headroom, less than runs like it need"
    else:
        how = f"{_gib(plan.headroom_bytes)} GiB headroom"
    return f"<b style='color:{colour}'>{html.escape(plan.verdict)}</b>, {how}"


def plan_html(plan: Plan, setup_line: str, chart: str = "") -> str:
    """The notebook's HTML block of ``plan`` (``setup_line``: the setup in words, render.py's;
    ``chart``: the peak's SVG bars, report.py's, when the planner registered it)."""
    terms = "".join(
        f"<tr><td>{html.escape(k)}</td><td style='text-align:right'>{_gib(v)}</td>"
        f"<td>{html.escape(glossary.term(k))}</td></tr>"
        for k, v in sorted(plan.terms.items(), key=lambda kv: -kv[1])
    )
    total = (
        f"<tr><td><b>total (device)</b></td><td style='text-align:right'><b>{_gib(plan.peak.device_bytes)}</b></td>"
        f"<td>allocated {_gib(plan.peak.allocated_bytes)} / reserved {_gib(plan.peak.reserved_bytes)} GiB;"
        f" the card: {_gib(plan.gpu.memory_bytes)} GiB torch can use</td></tr>"
    )
    phase = html.escape(plan.peak.phase)
    when = html.escape(glossary.phase(plan.peak.phase))
    alts = sorted(plan.alternatives, key=lambda a: not a.chosen)[:SHOWN_ALTERNATIVES]
    alt_rows = "".join(
        f"<tr><td>{'&#10003;' if a.chosen else ''}</td><td style='text-align:right'>{_gib(a.device_bytes)}</td>"
        f"<td style='text-align:right'>{'' if a.tokens_per_second is None else f'{a.tokens_per_second:,.0f}'}</td>"
        f"<td>{html.escape(a.reason)}</td></tr>"
        for a in alts
    )
    alt_table = (
        "<table><tr><th></th><th>device GiB</th><th>tok/s</th><th>setup</th></tr>" + alt_rows + "</table>"
        if alts
        else ""
    )
    notes = "".join(f"<li>{html.escape(n.text)}</li>" for n in plan.notes)
    head = f"<b>{html.escape(plan.model)}</b> on <b>{html.escape(plan.gpu.name)}</b> ({html.escape(plan.trainer)})"
    return (
        f"<div><p>{head}: {_verdict(plan)}<br>{html.escape(setup_line)}</p>"
        f"{chart}"
        f"<table><tr><th>term (peak at {phase}: {when})</th><th>GiB</th><th>what it holds</th></tr>{terms}{total}"
        "</table>"
        f"{alt_table}"
        f"{'<ul>' + notes + '</ul>' if notes else ''}</div>"
    )
