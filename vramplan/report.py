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
from vramplan.memory import estimate
from vramplan.models import load_model
from vramplan.results import Alternative
from vramplan.timing import data_parallel_replicas, missing_figure, step_time
from vramplan.units import GIB

if TYPE_CHECKING:
    from vramplan.results import Plan

#: one colour per kind of term (the part before the slash).
KIND_COLOURS = {
    "weights": "#4c72b0",
    "gradients": "#55a868",
    "optimizer": "#8172b3",
    "activations": "#dd8452",
    "loss": "#c44e52",
    "vision": "#da8bc3",
    "parallel": "#64b5cd",
    "inference": "#8c8c8c",
    "overhead": "#937860",
}
SHADES = ("", "cc", "99", "77")


def _colour(term: str, seen: dict[str, int]) -> str:
    kind = term.split("/")[0]
    base = KIND_COLOURS.get(kind, "#999999")
    i = seen.get(kind, 0)
    seen[kind] = i + 1
    return base + SHADES[i % len(SHADES)]


def _gib(n: float) -> str:
    return f"{n / GIB:.2f}"


def peak_bars_svg(plan: Plan) -> str:
    """Stacked horizontal bars of the peak by term, with the card's memory as a line."""
    bars = [(f"card {c.index}: {c.holds}", c.terms) for c in plan.cards] or [(f"peak at {plan.peak.phase}", plan.terms)]
    top = max([plan.gpu.memory_bytes] + [sum(t.values()) for _, t in bars]) * 1.08
    w, left, bar_h, gap = 960, 20, 34, 30
    h = 40 + len(bars) * (bar_h + gap) + 30
    span = w - 2 * left
    parts: list[str] = []
    legend: dict[str, str] = {}
    for row, (title, terms) in enumerate(bars):
        y = 40 + row * (bar_h + gap)
        parts.append(f'<text x="{left}" y="{y - 6}">{html.escape(title)}: {_gib(sum(terms.values()))} GiB</text>')
        x = float(left)
        seen: dict[str, int] = {}
        for name, value in sorted(terms.items(), key=lambda kv: -kv[1]):
            if value <= 0:
                continue
            colour = legend.setdefault(name, _colour(name, seen))
            width = value / top * span
            parts.append(
                f'<rect x="{x:.1f}" y="{y}" width="{width:.1f}" height="{bar_h}" fill="{colour}" stroke="white"'
                f' stroke-width="0.5"><title>{html.escape(name)}: {_gib(value)} GiB</title></rect>'
            )
            if width > 70:
                parts.append(
                    f'<text x="{x + 4:.1f}" y="{y + bar_h / 2 + 4}" fill="white">{html.escape(name.split("/")[-1])}'
                    "</text>"
                )
            x += width
    card_x = left + plan.gpu.memory_bytes / top * span
    parts.append(
        f'<line x1="{card_x:.1f}" x2="{card_x:.1f}" y1="20" y2="{h - 20}" stroke="black" stroke-dasharray="5 3"/>'
        f'<text x="{card_x - 4:.1f}" y="{h - 6}" text-anchor="end">{html.escape(plan.gpu.name)}:'
        f" {_gib(plan.gpu.memory_bytes)} GiB</text>"
    )
    keys = "".join(
        f'<span style="white-space:nowrap"><span style="color:{c}">&#9632;</span> {html.escape(n)} '
        f"({_gib(max(t.get(n, 0) for _, t in bars))} GiB)</span> &nbsp; "
        for n, c in legend.items()
    )
    return (
        f'<svg class="chart" width="{w}" height="{h}" xmlns="http://www.w3.org/2000/svg" font-family="sans-serif"'
        f' font-size="12">{"".join(parts)}</svg><p class="legend">{keys}</p>'
    )


def variants(plan: Plan) -> list[Any]:
    """The chosen setup at other micro-batches (1, 2, 4, 8) and with checkpointing on and
    off, as Alternatives: the memory/speed trade-off around the plan, pinned or not."""
    s = plan.setup
    if s.method == "inference" or s.rl != "none":
        return []  # no time model for generation; GRPO batches must hold whole groups
    spec = load_model(plan.source or plan.model)
    out = []
    for mb in (1, 2, 4, 8):
        for gc in (True, False):
            v = s.model_copy(update={"micro_batch": mb, "grad_checkpointing": gc})
            if v == s or any(a.setup == v for a in plan.alternatives):
                continue
            est = estimate(spec, v)
            t = None if missing_figure(plan.gpu, v) else step_time(spec, v, plan.gpu)
            fits = est.device_bytes <= plan.gpu.memory_bytes
            label = f"mb{mb} {'GC' if gc else 'no GC'}"
            out.append(
                Alternative(
                    setup=v,
                    fits=fits,
                    device_bytes=est.device_bytes,
                    chosen=False,
                    reason=f"{label}: {'fits' if fits else 'does not fit'}",
                    verdict="fits" if fits else "does_not_fit",
                    tokens_per_second=t.tokens_per_second * data_parallel_replicas(v) if t else None,
                    seconds_per_step=t.seconds_per_step if t else None,
                )
            )
    return out


def alternatives_svg(plan: Plan) -> str:
    """The weighed setups, and the chosen one at other micro-batches and checkpointing, as
    device memory (x) against tokens per second (y)."""
    pts = [a for a in [*plan.alternatives, *variants(plan)] if a.tokens_per_second]
    if not pts:
        missing = missing_figure(plan.gpu, plan.setup)
        if missing and plan.setup.method != "inference" and plan.setup.rl == "none":
            why = f"{html.escape(plan.gpu.name)} has no published {missing}, so the time model gives it no speed"
            return f'<p class="muted">No speeds to chart: {why}.</p>'
        return '<p class="muted">No training alternatives to chart (generation plans have no time model).</p>'
    w, h, pad = 960, 380, 60
    xmax = max([plan.gpu.memory_bytes] + [a.device_bytes for a in pts]) * 1.1
    ymax = max(a.tokens_per_second or 0 for a in pts) * 1.15

    def px(v: float) -> float:
        return pad + v / xmax * (w - 2 * pad)

    def py(v: float) -> float:
        return h - pad - v / ymax * (h - 2 * pad)

    parts = [
        f'<line x1="{pad}" x2="{w - pad}" y1="{h - pad}" y2="{h - pad}" stroke="black"/>',
        f'<line x1="{pad}" x2="{pad}" y1="{pad / 2}" y2="{h - pad}" stroke="black"/>',
        f'<text x="{w / 2}" y="{h - 16}" text-anchor="middle">device memory per GPU (GiB)</text>',
        f'<text x="16" y="{h / 2}" transform="rotate(-90 16 {h / 2})" text-anchor="middle">tokens/s (estimated)</text>',
    ]
    for frac in (0.25, 0.5, 0.75, 1.0):
        parts.append(
            f'<text x="{px(xmax * frac):.1f}" y="{h - pad + 16}" text-anchor="middle">{xmax * frac / GIB:.0f}</text>'
        )
        parts.append(f'<text x="{pad - 6}" y="{py(ymax * frac) + 4:.1f}" text-anchor="end">{ymax * frac:,.0f}</text>')
    cx = px(plan.gpu.memory_bytes)
    parts.append(
        f'<line x1="{cx:.1f}" x2="{cx:.1f}" y1="{pad / 2}" y2="{h - pad}" stroke="black" stroke-dasharray="5 3"/>'
        f'<text x="{cx + 4:.1f}" y="{pad / 2 + 10}">{html.escape(plan.gpu.name)}</text>'
    )
    for a in pts:
        x, y = px(a.device_bytes), py(a.tokens_per_second or 0)
        colour = "#2a9d3a" if a.fits else "#c44e52"
        r = 8 if a.chosen else 5
        if a not in plan.alternatives:
            colour = "#9fd8a8" if a.fits else "#e8a3a6"  # a variant of the chosen setup
        ring = ' stroke="black" stroke-width="2"' if a.chosen else ""
        label = a.reason.split(":")[0]
        parts.append(
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{r}" fill="{colour}"{ring}><title>{html.escape(a.reason)}'
            f" ({_gib(a.device_bytes)} GiB, {a.tokens_per_second:,.0f} tok/s)</title></circle>"
            f'<text x="{x + 10:.1f}" y="{y + 4:.1f}">{html.escape(label)}</text>'
        )
    return (
        f'<svg class="chart" width="{w}" height="{h}" xmlns="http://www.w3.org/2000/svg" font-family="sans-serif"'
        f' font-size="12">{"".join(parts)}</svg><p class="legend">dark: setups the plan weighed (ringed: chosen);'
        " light: the chosen setup at other micro-batches and checkpointing; green fits, red does not.</p>"
    )


CHECK_SCRIPT = """<script>
(function () {
  var charts = document.querySelectorAll("svg.chart");
  charts.forEach(function (svg) {
    var box = svg.getBBox();
    if (!(box.width > 0 && box.height > 0)) { throw new Error("a chart did not lay out"); }
  });
  document.body.setAttribute("data-charts", String(charts.length));
})();
</script>"""

STYLE = """<style>
body { font-family: sans-serif; margin: 24px; max-width: 1000px; color: #222; }
.fits { color: #2a7d2a; } .over { color: #b02a2a; }
.muted { color: #666; } .legend { font-size: 12px; }
pre { background: #f6f6f6; padding: 12px; overflow-x: auto; font-size: 12px; }
table { border-collapse: collapse; font-size: 13px; } td, th { padding: 2px 10px; text-align: left; }
</style>"""


def report_html(
    plan: Plan,
    *,
    time_line: str | None = None,
    emitted: dict[str, str] | None = None,
    emit_note: str = "",
    timeline_svg: str | None = None,
) -> str:
    """The page for ``plan``: ``time_line`` (wall time and cost), ``emitted`` (file name ->
    text), ``timeline_svg`` (a trace's live-memory chart)."""
    from vramplan.render import _setup_line

    verdict = (
        f'<b class="fits">FITS</b> with {_gib(plan.headroom_bytes)} GiB headroom'
        if plan.fits
        else f'<b class="over">DOES NOT FIT</b>: {_gib(-plan.headroom_bytes)} GiB over'
    )
    tiers = (
        f"<table><tr><th>allocated</th><th>reserved</th><th>device</th><th>card</th></tr><tr>"
        f"<td>{_gib(plan.peak.allocated_bytes)}</td><td>{_gib(plan.peak.reserved_bytes)}</td>"
        f"<td>{_gib(plan.peak.device_bytes)}</td><td>{_gib(plan.gpu.memory_bytes)}</td></tr></table>"
    )
    sections = [
        f"<h1>{html.escape(plan.model)} on {html.escape(plan.gpu.name)}</h1>",
        f"<p>{verdict}<br><span class='muted'>{html.escape(_setup_line(plan))}</span></p>",
        f"<p>{plan.total_params / 1e9:.2f}B parameters, {plan.trainable_params:,} trainable. Peak (GiB):</p>{tiers}",
        "<h2>Peak memory by term</h2>",
        peak_bars_svg(plan),
        "<h2>Alternatives: memory and speed</h2>",
        alternatives_svg(plan),
    ]
    if time_line:
        sections += ["<h2>Time</h2>", f"<p>{html.escape(time_line)}</p>"]
    if plan.host_terms:
        rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{_gib(v)}</td></tr>" for k, v in plan.host_terms.items())
        sections += ["<h2>Host RAM per node</h2>", f"<table>{rows}</table>"]
    if plan.notes:
        items = "".join(f"<li>{html.escape(n.text)}</li>" for n in plan.notes)
        sections += ["<h2>Notes</h2>", f"<ul>{items}</ul>"]
    if timeline_svg:
        sections += ["<h2>Traced live memory</h2>", timeline_svg]
    if emitted:
        sections.append("<h2>Config (trl)</h2>")
        if emit_note:
            sections.append(f"<p class='muted'>{html.escape(emit_note)}</p>")
        for name, text in emitted.items():
            sections += [f"<h3>{html.escape(name)}</h3>", f"<pre>{html.escape(text)}</pre>"]
    elif emit_note:
        sections += ["<h2>Config</h2>", f"<p class='muted'>{html.escape(emit_note)}</p>"]
    body = "\n".join(sections)
    title = html.escape(f"vramplan: {plan.model} on {plan.gpu.name}")
    head = f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>{STYLE}</head>'
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


def report_page(plan: Plan, *, time_line: str | None = None, timeline_svg: str | None = None) -> str:
    """The page :func:`write_report` writes."""
    files, note = emitted_files(plan)
    return report_html(plan, time_line=time_line, emitted=files, emit_note=note, timeline_svg=timeline_svg)


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


def draw_plan_png(plan: Plan, target: Path) -> None:
    """Draw the PNG at ``target`` (in place: :func:`plot_plan_png` gives it a temporary name)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise VramplanError("plot", "a PNG needs matplotlib (pip install 'vramplan[plot]')") from None
    bars = [(f"card {c.index}", c.terms) for c in plan.cards] or [("peak", plan.terms)]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 3 + 0.6 * len(bars) + 4), dpi=110)
    seen: dict[str, int] = {}
    colours: dict[str, str] = {}
    for row, (_, terms) in enumerate(bars):
        left = 0.0
        for name, value in sorted(terms.items(), key=lambda kv: -kv[1]):
            colour = colours.setdefault(name, _colour(name, seen))
            ax1.barh(row, value / GIB, left=left, color=colour, label=name if row == 0 else None)
            left += value / GIB
    ax1.axvline(plan.gpu.memory_bytes / GIB, color="black", ls="--", lw=0.8)
    ax1.set_yticks(range(len(bars)), [b[0] for b in bars])
    ax1.set_xlabel(f"GiB (dashed: {plan.gpu.name})")
    ax1.set_title(f"{plan.model} on {plan.gpu.name}: {'fits' if plan.fits else 'does not fit'}", fontsize=10)
    ax1.legend(fontsize=7, ncol=3, loc="lower right")
    pts = [a for a in [*plan.alternatives, *variants(plan)] if a.tokens_per_second]
    for a in pts:
        ax2.scatter(
            a.device_bytes / GIB,
            a.tokens_per_second,
            s=80 if a.chosen else 30,
            color="#2a9d3a" if a.fits else "#c44e52",
            edgecolors="black" if a.chosen else "none",
        )
        ax2.annotate(a.reason.split(":")[0], (a.device_bytes / GIB, a.tokens_per_second or 0), fontsize=7)
    ax2.axvline(plan.gpu.memory_bytes / GIB, color="black", ls="--", lw=0.8)
    ax2.set_xlabel("device memory per GPU (GiB)")
    ax2.set_ylabel(f"tokens/s at seq {plan.setup.seq_len} (estimated)")
    fig.tight_layout()
    try:
        fig.savefig(target)
    finally:
        plt.close(fig)
