"""The report's charts as inline SVG: the peak by term (one bar per card), the peak by phase,
the alternatives as memory against speed, and a trace's phases beside the estimate.

Every chart scales with its ``viewBox`` (width 100%), places its labels with
:mod:`vramplan.report_layout` so none overlaps another or leaves the chart, and puts its
legend below the data. Torch-free."""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from vramplan.memory import estimate
from vramplan.models import load_model
from vramplan.render_phases import ORDER
from vramplan.report_layout import ASCENT, DESCENT, Placer, around, nice_ticks, text_width, tick_label
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
FONT = 12
WIDTH = 760


def _colour(term: str, seen: dict[str, int]) -> str:
    kind = term.split("/")[0]
    base = KIND_COLOURS.get(kind, "#999999")
    i = seen.get(kind, 0)
    seen[kind] = i + 1
    return base + SHADES[i % len(SHADES)]


def term_colours(bars: list[tuple[str, dict[str, int]]]) -> dict[str, str]:
    """A colour for every term above zero on any bar, in the order the bars meet them."""
    seen: dict[str, int] = {}
    out: dict[str, str] = {}
    for _, terms in bars:
        for name, value in sorted(terms.items(), key=lambda kv: -kv[1]):
            if value > 0 and name not in out:
                out[name] = _colour(name, seen)
    return out


def _gib(n: float) -> str:
    return f"{n / GIB:.2f}"


def _text(x: float, y: float, text: str, anchor: str = "start", extra: str = "") -> str:
    a = "" if anchor == "start" else f' text-anchor="{anchor}"'
    return f'<text x="{x:.1f}" y="{y:.1f}"{a}{extra}>{html.escape(text)}</text>'


def _svg(w: float, h: float, body: list[str], label: str) -> str:
    return (
        f'<svg class="chart" viewBox="0 0 {w:.0f} {h:.0f}" width="100%" role="img" aria-label="{html.escape(label)}"'
        f' xmlns="http://www.w3.org/2000/svg" font-family="sans-serif" font-size="{FONT}"'
        f' style="max-width:{w:.0f}px">{"".join(body)}</svg>'
    )


def _x_axis(scale: Any, ticks: list[float], y: float, y_top: float) -> list[str]:
    """Tick lines and labels (GiB) along ``y``, grid lines up to ``y_top``."""
    step = ticks[1] - ticks[0]
    out = [f'<line x1="{scale(0):.1f}" x2="{scale(ticks[-1]):.1f}" y1="{y}" y2="{y}" stroke="#444"/>']
    for t in ticks:
        x = scale(t)
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{y_top}" y2="{y}" stroke="#e4e4e4"/>')
        out.append(_text(x, y + FONT + 4, tick_label(t, step), "middle"))
    return out


def _card_line(x: float, y0: float, y1: float, text: str, w: float) -> list[str]:
    """The card's memory as a dashed line, named in the band above ``y0``, kept inside ``w``."""
    anchor = "start" if x + 4 + text_width(text, FONT) <= w - 2 else "end"
    tx = x + 4 if anchor == "start" else x - 4
    return [
        f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{y0 - 14}" y2="{y1}" stroke="black" stroke-dasharray="5 3"/>',
        _text(tx, y0 - 4, text, anchor),
    ]


def peak_bars_svg(plan: Plan) -> str:
    """Stacked horizontal bars of the peak by term against the card (a dashed line), one bar
    per card; a term is named inside its segment only where the name fits, and the legend
    below lists every term on any card with its largest value."""
    bars = [(f"card {c.index}: {c.holds}", c.terms) for c in plan.cards] or [(f"peak at {plan.peak.phase}", plan.terms)]
    card = plan.gpu.memory_bytes / GIB
    ticks = nice_ticks(max([card] + [sum(t.values()) / GIB for _, t in bars]) * 1.02)
    w, left, right, bar_h, gap = WIDTH, 12, 24, 30, 26
    span = w - left - right

    def sx(gib: float) -> float:
        return left + gib / ticks[-1] * span

    top = 44
    axis_y = top + len(bars) * (bar_h + gap) - gap + 8
    h = axis_y + FONT + 12
    colours = term_colours(bars)
    parts = _x_axis(sx, ticks, axis_y, top - 4)
    for row, (title, terms) in enumerate(bars):
        y = top + row * (bar_h + gap)
        parts.append(_text(left, y - 6, f"{title}: {_gib(sum(terms.values()))} GiB"))
        x = float(left)
        for name, value in sorted(terms.items(), key=lambda kv: -kv[1]):
            if value <= 0:
                continue
            width = value / GIB / ticks[-1] * span
            parts.append(
                f'<rect x="{x:.1f}" y="{y}" width="{width:.1f}" height="{bar_h}" fill="{colours[name]}" stroke="white"'
                f' stroke-width="0.5"><title>{html.escape(name)}: {_gib(value)} GiB</title></rect>'
            )
            short = name.split("/")[-1]
            if text_width(short, FONT) + 8 <= width:
                parts.append(_text(x + 4, y + bar_h / 2 + 4, short, extra=' fill="white" class="in"'))
            x += width
    parts += _card_line(sx(card), top - 16, axis_y, f"{plan.gpu.name}: {_gib(plan.gpu.memory_bytes)} GiB", w)
    keys = "".join(
        f'<span class="key"><span style="color:{c}">&#9632;</span> {html.escape(n)}'
        f" {_gib(max(t.get(n, 0) for _, t in bars))}</span> "
        for n, c in colours.items()
    )
    label = "peak memory by term" + (" on each card" if plan.cards else "")
    return _svg(w, h, parts, label) + f'<p class="legend">GiB, largest on any card: {keys}</p>'


def phase_order(phases: dict[str, int]) -> list[str]:
    """The phases in the order a run meets them (render_phases.ORDER; others after, as given)."""
    order = {name: i for i, name in enumerate(ORDER)}
    names = list(phases)
    return sorted(names, key=lambda n: (order.get(n, len(ORDER)), names.index(n)))


def phase_bars_svg(
    rows: list[tuple[str, list[tuple[int, str]]]], card_bytes: int, card_name: str, peak: str, label: str
) -> str:
    """Rows of bars (one or more a row: value bytes and colour) against the card, the value
    after each bar; the row named ``peak`` bold and marked."""
    names_w = max(text_width(n, FONT, bold=True) for n, _ in rows) + 12
    values = [v for _, series in rows for v, _ in series]
    ticks = nice_ticks(max([card_bytes, *values]) / GIB * 1.02)
    w, right, thick = WIDTH, 128, 16
    row_h = thick * max(len(s) for _, s in rows) + 10
    left, top = names_w, 34
    span = w - left - right

    def sx(gib: float) -> float:
        return left + gib / ticks[-1] * span

    axis_y = top + len(rows) * row_h
    parts = _x_axis(sx, ticks, axis_y, top - 4)
    for i, (name, series) in enumerate(rows):
        y = top + i * row_h + 4
        bold = ' font-weight="bold"' if name == peak else ""
        mid = y + len(series) * thick / 2 + (ASCENT - DESCENT) * FONT / 2
        parts.append(_text(left - 8, mid, name, "end", bold))
        for j, (value, colour) in enumerate(series):
            yy = y + j * thick
            end = sx(value / GIB)
            parts.append(
                f'<rect x="{left}" y="{yy}" width="{end - left:.1f}" height="{thick - 2}" fill="{colour}">'
                f"<title>{html.escape(name)}: {_gib(value)} GiB</title></rect>"
            )
            note = f"{_gib(value)}" + ("  peak" if name == peak and j == 0 else "")
            parts.append(_text(end + 4, yy + thick - 4, note, extra=bold if j == 0 else ""))
    parts += _card_line(sx(card_bytes / GIB), top - 6, axis_y, f"{card_name}: {_gib(card_bytes)} GiB", w)
    return _svg(w, axis_y + FONT + 12, parts, label)


def phases_svg(plan: Plan) -> str:
    """The allocated peak of each phase the plan computes, in the order a run meets them,
    the phase that sets the peak marked."""
    if not plan.phases:
        return ""
    rows = [(n, [(plan.phases[n], "#4c72b0" if n == plan.peak.phase else "#9db4d8")]) for n in phase_order(plan.phases)]
    return phase_bars_svg(rows, plan.gpu.memory_bytes, plan.gpu.name, plan.peak.phase, "allocated peak by phase")


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
            est = estimate(spec, v, nvlink=plan.gpu.nvlink)
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


def chart_points(plan: Plan) -> list[Any]:
    """The setups the scatter draws: the plan's alternatives and the variants, with a speed."""
    return [a for a in [*plan.alternatives, *variants(plan)] if a.tokens_per_second]


def pareto(points: list[Any]) -> set[int]:
    """Indices of the points no other point beats on both memory (less) and speed (more)."""
    out = set()
    for i, a in enumerate(points):
        if not any(
            b.device_bytes <= a.device_bytes
            and b.tokens_per_second >= a.tokens_per_second
            and (b.device_bytes, b.tokens_per_second) != (a.device_bytes, a.tokens_per_second)
            for b in points
        ):
            out.add(i)
    return out


def x_range(plan: Plan) -> list[float]:
    """The scatter's GiB ticks: the card's range (a fifth beyond it), not the largest setup's."""
    return nice_ticks(plan.gpu.memory_bytes / GIB * 1.2)


@dataclass
class Scatter:
    """The alternatives chart's geometry (SVG units): margins, ticks, each setup's marker."""

    xt: list[float]
    yt: list[float]
    w: float = WIDTH
    h: float = 380
    left: float = 76
    right: float = 16
    top: float = 30
    bottom: float = 52
    marks: list[tuple] = field(default_factory=list)  # (setup, x, y, radius)
    card_x: float = 0.0  # the card's memory on the x axis

    @classmethod
    def of(cls, plan: Plan, pts: list[Any]) -> Scatter:
        g = cls(x_range(plan), nice_ticks(max(a.tokens_per_second for a in pts) * 1.05, 5))
        g.marks = [(a, g.sx(a.device_bytes / GIB), g.sy(a.tokens_per_second), 8 if a.chosen else 5) for a in pts]
        g.card_x = g.sx(plan.gpu.memory_bytes / GIB)
        return g

    def sx(self, gib: float) -> float:
        return self.left + min(gib, self.xt[-1]) / self.xt[-1] * (self.w - self.left - self.right)

    def sy(self, tps: float) -> float:
        return self.h - self.bottom - tps / self.yt[-1] * (self.h - self.top - self.bottom)

    @property
    def area(self) -> tuple[float, float, float, float]:
        """Where labels may go: right of the y axis, above the x axis."""
        return (self.left + 2, 2, self.w - 2, self.h - self.bottom - 2)


def alternatives_svg(plan: Plan) -> str:
    """The weighed setups, and the chosen one at other micro-batches and checkpointing, as
    device memory (x, over the card's range) against tokens per second (y). A setup beyond
    the axis is a triangle at its edge with its GiB; labels go where they clear every other
    label and marker, and every setup is in the table below."""
    pts = chart_points(plan)
    if not pts:
        missing = missing_figure(plan.gpu, plan.setup)
        if missing and plan.setup.method != "inference" and plan.setup.rl == "none":
            why = f"{html.escape(plan.gpu.name)} has no published {missing}, so the time model gives it no speed"
            return f'<p class="muted">No speeds to chart: {why}.</p>'
        return '<p class="muted">No training alternatives to chart (generation plans have no time model).</p>'
    g = Scatter.of(plan, pts)
    w, h, left, right, top, bottom, xt, yt, sx, sy = g.w, g.h, g.left, g.right, g.top, g.bottom, g.xt, g.yt, g.sx, g.sy
    base = h - bottom
    parts = _x_axis(sx, xt, base, top)
    ystep = yt[1] - yt[0]
    parts.append(f'<line x1="{left}" x2="{left}" y1="{top}" y2="{base}" stroke="#444"/>')
    for t in yt:
        parts.append(f'<line x1="{left}" x2="{w - right}" y1="{sy(t):.1f}" y2="{sy(t):.1f}" stroke="#f0f0f0"/>')
        parts.append(_text(left - 6, sy(t) + 4, tick_label(t, ystep), "end"))
    parts.append(_text((left + w - right) / 2, h - 8, "device memory per GPU (GiB)", "middle"))
    parts.append(
        _text(16, (top + base) / 2, "tokens/s (estimated)", "middle", f' transform="rotate(-90 16 {(top + base) / 2})"')
    )
    card_x, marks = g.card_x, g.marks
    parts.append(
        f'<line x1="{card_x:.1f}" x2="{card_x:.1f}" y1="{top}" y2="{base}" stroke="black" stroke-dasharray="5 3"/>'
    )
    labelled = [
        _text(x, y, text, anchor, ' font-weight="bold"' if bold else "")
        for _, text, x, y, anchor, bold in point_labels(plan, marks, xt[-1], card_x, g.area, top)
    ]
    for a, x, y, r in marks:
        colour = "#2a9d3a" if a.fits else "#c44e52"
        if a not in plan.alternatives:
            colour = "#9fd8a8" if a.fits else "#e8a3a6"  # a variant of the chosen setup
        tip = f"<title>{html.escape(a.reason)} ({_gib(a.device_bytes)} GiB, {a.tokens_per_second:,.0f} tok/s)</title>"
        if a.device_bytes / GIB > xt[-1]:
            tri = f"M{x - 8:.1f},{y - 6:.1f} L{x:.1f},{y:.1f} L{x - 8:.1f},{y + 6:.1f} Z"
            parts.append(f'<path d="{tri}" fill="{colour}">{tip}</path>')
        else:
            ring = ' stroke="black" stroke-width="2"' if a.chosen else ""
            parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{r}" fill="{colour}"{ring}>{tip}</circle>')
    legend = (
        '<p class="legend">dark: setups the plan weighed (ringed: chosen); light: the chosen setup at other'
        " micro-batches and checkpointing; green fits, red does not; &#9656; at the edge: beyond the axis, its GiB"
        " named.</p>"
    )
    return _svg(w, h, parts + labelled, "alternatives: memory against speed") + legend + _points_table(plan, pts)


def point_labels(plan: Plan, marks: list[tuple], x_top: float, card_x: float, area: tuple, top: float) -> list[tuple]:
    """Where each label goes, as ``(index or -1 for the card, text, x, y, anchor, bold)``: the
    card's name first, then the chosen setup, the Pareto front, the rest by memory; a label
    that finds no clear place is left out (the table lists every setup)."""
    placer = Placer(area, FONT)
    out: list[tuple] = []
    for _, x, y, r in marks:
        placer.reserve((x - r - 1, y - r - 1, x + r + 1, y + r + 1))
    where = placer.place(plan.gpu.name, [(card_x + 4, top - 6, "start"), (card_x - 4, top - 6, "end")])
    if where:
        out.append((-1, plan.gpu.name, *where, False))
    pts = [m[0] for m in marks]
    front = pareto(pts)
    for i in sorted(range(len(pts)), key=lambda i: (not pts[i].chosen, i not in front, pts[i].device_bytes)):
        a, x, y, r = marks[i]
        clipped = a.device_bytes / GIB > x_top
        text = a.reason.split(":")[0] + (f" {_gib(a.device_bytes)} GiB" if clipped else "")
        cands = around(x, y, r, FONT, far=a.chosen)
        if clipped:  # at the right edge: the label goes to the left
            cands = [c for c in cands if c[2] == "end"]
        where = placer.place(text, cands, bold=a.chosen)
        if where:
            out.append((i, text, *where, a.chosen))
    return out


def _points_table(plan: Plan, pts: list[Any]) -> str:
    rows = "".join(
        f"<tr><td>{'<b>' if a.chosen else ''}{html.escape(a.reason.split(':')[0])}{'</b>' if a.chosen else ''}</td>"
        f'<td class="num">{_gib(a.device_bytes)}</td><td class="num">{a.tokens_per_second:,.0f}</td>'
        f"<td>{'fits' if a.fits else 'does not fit'}</td></tr>"
        for a in sorted(pts, key=lambda a: (not a.chosen, not a.fits, -a.tokens_per_second))
    )
    return (
        f"<details><summary>every setup charted ({len(pts)})</summary><table><tr><th>setup</th><th>GiB</th>"
        f"<th>tok/s</th><th>on the {html.escape(plan.gpu.name)}</th></tr>{rows}</table></details>"
    )


def beside_trace_svg(plan: Plan, traced: dict[str, int]) -> str:
    """The estimate's peak in each traced phase (less what only CUDA spends) beside the
    trace's (the largest over its steps)."""
    from vramplan.memory import overhead
    from vramplan.memory.phases import TRACED_PHASES

    cuda = overhead.cublas_workspace_bytes()
    rows = []
    for name, mine in TRACED_PHASES.items():
        est = [plan.phases[p] for p in mine if p in plan.phases]
        got = [v for k, v in traced.items() if k.split("/")[-1] == name]
        if est and got:
            rows.append((name, [(max(est) - cuda, "#4c72b0"), (max(got), "#8c8c8c")]))
    if not rows:
        return ""
    peak = max(rows, key=lambda r: r[1][1][0])[0]
    chart = phase_bars_svg(rows, plan.gpu.memory_bytes, plan.gpu.name, peak, "the estimate beside the trace")
    return (
        chart + '<p class="legend"><span style="color:#4c72b0">&#9632;</span> the estimate (allocated, without'
        ' CUDA-only workspaces) &nbsp; <span style="color:#8c8c8c">&#9632;</span> the trace, largest over its'
        " steps (GiB)</p>"
    )
