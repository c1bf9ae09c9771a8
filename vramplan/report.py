"""The plan as one self-contained HTML page (``--report``) or a PNG (``--plot``).

The page has the verdict, a stacked bar of the peak by term against the card's memory (one
bar per card under ``device_map``), the alternatives as memory against speed, the wall time
and cost when asked, the emitted trl config, and the live-memory timeline when a trace was
run. Charts are inline SVG; a few lines of script check that each chart laid out and mark
the page (``data-charts``), which the browser test reads. Nothing is fetched. Torch-free.
"""

from __future__ import annotations

import functools
import html
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vramplan.emit import emit
from vramplan.errors import VramplanError
from vramplan.files import write_file_atomically
from vramplan.report_png import draw_plan_png
from vramplan.report_svg import (
    alternatives_svg,
    beside_trace_svg,
    peak_bars_svg,
    phases_svg,
)
from vramplan.units import GIB

if TYPE_CHECKING:
    from vramplan.results import Plan

#: checks each chart laid out and writes, for the browser test, the page's width against the
#: window (``data-scroll``) and every SVG text's box relative to its chart (``data-boxes``:
#: the chart's width and height, its top on the page, then ``[x0, y0, x1, y1, text]`` per label,
#: with the box of the bar it is drawn on for a label inside a bar (class ``in``); CSS pixels)
CHECK_SCRIPT = """<script>
(function () {
  var charts = document.querySelectorAll("svg.chart");
  charts.forEach(function (svg) {
    var box = svg.getBBox();
    if (!(box.width > 0 && box.height > 0)) { throw new Error("a chart did not lay out"); }
    var c = svg.getBoundingClientRect(), texts = [];
    function rel(r) { return [r.left - c.left, r.top - c.top, r.right - c.left, r.bottom - c.top]; }
    svg.querySelectorAll("text").forEach(function (t) {
      var box = rel(t.getBoundingClientRect()).concat([t.textContent]), on = t.previousElementSibling;
      if (t.getAttribute("class") === "in" && on) { box.push(rel(on.getBoundingClientRect())); }
      texts.push(box);
    });
    var top = c.top + window.scrollY;
    svg.setAttribute("data-boxes", JSON.stringify({"chart": [c.width, c.height], "top": top, "texts": texts}));
  });
  document.body.setAttribute("data-charts", String(charts.length));
  document.body.setAttribute("data-scroll", document.documentElement.scrollWidth + " " + window.innerWidth);
})();
</script>"""

STYLE = """<style>
body { font-family: sans-serif; margin: 12px auto; padding: 0 12px; max-width: 960px; color: #222; }
.fits { color: #2a7d2a; } .over { color: #b02a2a; }
.muted { color: #666; } .legend { font-size: 12px; margin-top: 2px; } .key { white-space: nowrap; margin-right: 12px; }
svg.chart { display: block; height: auto; }
pre { background: #f6f6f6; padding: 12px; overflow-x: auto; font-size: 12px; }
table { border-collapse: collapse; font-size: 13px; } td, th { padding: 2px 10px; text-align: left; }
td.num { text-align: right; } .wide { overflow-x: auto; } summary { cursor: pointer; }
</style>"""


def _gib(n: float) -> str:
    return f"{n / GIB:.2f}"


def report_html(
    plan: Plan,
    *,
    time_line: str | None = None,
    emitted: dict[str, str] | None = None,
    emit_note: str = "",
    timeline_svg: str | None = None,
    traced_phases: dict[str, int] | None = None,
) -> str:
    """The page for ``plan``: ``time_line`` (wall time and cost), ``emitted`` (file name ->
    text, folded away), ``timeline_svg`` (a trace's live-memory chart) and ``traced_phases``
    (its peak by ``step<i>/<phase>``, drawn beside the estimate's)."""
    from vramplan.render import _setup_line

    verdict = (
        f'<b class="fits">FITS</b> with {_gib(plan.headroom_bytes)} GiB headroom'
        if plan.fits
        else f'<b class="over">DOES NOT FIT</b>: {_gib(-plan.headroom_bytes)} GiB over'
    )
    tiers = (
        f"<table><tr><th>allocated</th><th>reserved</th><th>device</th><th>card</th></tr><tr>"
        f'<td class="num">{_gib(plan.peak.allocated_bytes)}</td><td class="num">{_gib(plan.peak.reserved_bytes)}</td>'
        f'<td class="num">{_gib(plan.peak.device_bytes)}</td><td class="num">{_gib(plan.gpu.memory_bytes)}</td>'
        "</tr></table>"
    )
    sections = [
        f"<h1>{html.escape(plan.model)} on {html.escape(plan.gpu.name)}</h1>",
        f"<p>{verdict}<br><span class='muted'>{html.escape(_setup_line(plan))}</span></p>",
        f"<p>{plan.total_params / 1e9:.2f}B parameters, {plan.trainable_params:,} trainable. Peak (GiB):</p>{tiers}",
        "<h2>Peak memory by term</h2>",
        peak_bars_svg(plan),
    ]
    if plan.phases:
        sections += [
            f"<h2>Peak by phase</h2><p class='muted'>allocated GiB in each phase, in the order a step meets them;"
            f" the peak is at {html.escape(plan.peak.phase)}.</p>",
            phases_svg(plan),
        ]
    if timeline_svg or traced_phases:
        sections.append("<h2>The trace beside the estimate</h2>")
        if traced_phases:
            sections.append(beside_trace_svg(plan, traced_phases))
        if timeline_svg:
            sections += ["<h3>Traced live memory</h3>", f'<div class="wide">{timeline_svg}</div>']
    sections += ["<h2>Alternatives: memory and speed</h2>", alternatives_svg(plan)]
    if time_line:
        sections += ["<h2>Time</h2>", f"<p>{html.escape(time_line)}</p>"]
    if plan.host_terms:
        rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{_gib(v)}</td></tr>" for k, v in plan.host_terms.items())
        sections += ["<h2>Host RAM per node</h2>", f"<table>{rows}</table>"]
    if plan.notes:
        items = "".join(f"<li>{html.escape(n.text)}</li>" for n in plan.notes)
        sections += ["<h2>Notes</h2>", f"<ul>{items}</ul>"]
    if emitted:
        sections.append("<h2>Config (trl)</h2>")
        if emit_note:
            sections.append(f"<p class='muted'>{html.escape(emit_note)}</p>")
        for name, text in emitted.items():
            lines = text.count("\n") + 1
            summary = f"<summary>{html.escape(name)} ({lines} lines)</summary>"
            sections.append(f"<details>{summary}<pre>{html.escape(text)}</pre></details>")
    elif emit_note:
        sections += ["<h2>Config</h2>", f"<p class='muted'>{html.escape(emit_note)}</p>"]
    body = "\n".join(sections)
    title = html.escape(f"vramplan: {plan.model} on {plan.gpu.name}")
    head = (
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{title}</title>{STYLE}</head>'
    )
    return f"{head}\n<body>\n{body}\n{CHECK_SCRIPT}\n</body></html>\n"


def emitted_files(plan: Plan) -> tuple[dict[str, str] | None, str]:
    """The trl config for the page, or why there is none."""
    try:
        out: Any = emit(plan, "trl", force=True)
    except VramplanError as exc:
        return None, f"no trl config: {exc.message}"
    note = "" if plan.fits else "The plan does not fit: this config is what --force would write."
    return dict(out.files), note


def check_output(path: str | Path, field: str, suffixes: tuple[str, ...], *, needs_matplotlib: bool = False) -> Path:
    """Refuse, before anything is written, a path that cannot take the output: wrong
    extension, an existing directory, a folder that is missing or not writable, or no
    matplotlib for a PNG."""
    target = Path(path)
    if target.suffix.lower() not in suffixes:
        raise VramplanError(field, f"write {' or '.join(suffixes)}, not {target.suffix or 'no extension'}")
    if target.is_dir():
        raise VramplanError(field, f"{target} is a directory")
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise VramplanError(field, f"{folder} is not a directory")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise VramplanError(field, f"cannot write into {folder}")
    if needs_matplotlib:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise VramplanError(field, "a PNG needs matplotlib (pip install 'vramplan[plot]')") from None
    return target


def report_page(
    plan: Plan,
    *,
    time_line: str | None = None,
    timeline_svg: str | None = None,
    traced_phases: dict[str, int] | None = None,
) -> str:
    """The page :func:`write_report` writes."""
    files, note = emitted_files(plan)
    return report_html(
        plan,
        time_line=time_line,
        emitted=files,
        emit_note=note,
        timeline_svg=timeline_svg,
        traced_phases=traced_phases,
    )


def write_report(
    plan: Plan, path: str | Path, *, time_line: str | None = None, timeline_svg: str | None = None
) -> Path:
    """Write the page to ``path`` (.html), all or nothing."""
    target = check_output(path, "report", (".html", ".htm"))
    page = report_page(plan, time_line=time_line, timeline_svg=timeline_svg)
    return write_file_atomically(target, page, field="report")


def plot_plan_png(plan: Plan, path: str | Path) -> Path:
    """The same two charts as a PNG (matplotlib, the ``plot`` extra), whole or not at all."""

    target = check_output(path, "plot", (".png",))
    return write_file_atomically(target, functools.partial(draw_plan_png, plan), field="plot")
