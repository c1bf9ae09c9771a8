"""The plan as a PNG (``--plot``; matplotlib, the ``plot`` extra): the report's three charts
laid out as on the page (report_svg.py): the peak by term with its legend below the bars
listing every term on any card, the peak by phase with the peak marked, and the
alternatives over the card's range with the same label placement as the page's."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from vramplan.errors import VramplanError
from vramplan.report_layout import ASCENT, DESCENT
from vramplan.report_svg import FONT, Scatter, chart_points, phase_order, point_labels, term_colours
from vramplan.units import GIB

if TYPE_CHECKING:
    from vramplan.results import Plan


def draw_plan_png(plan: Plan, target: Path) -> None:
    """Draw the PNG at ``target`` (in place: report.plot_plan_png gives it a temporary name)."""
    fig = plan_figure(plan)  # refuses first when matplotlib is missing
    import matplotlib.pyplot as plt

    try:
        fig.savefig(target)
    finally:
        plt.close(fig)


def plan_figure(plan: Plan) -> Any:
    """The PNG's matplotlib figure: peak by term, peak by phase, alternatives."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise VramplanError("plot", "a PNG needs matplotlib (pip install 'vramplan[plot]')") from None
    bars = [(f"card {c.index}", c.terms) for c in plan.cards] or [("peak", plan.terms)]
    colours = term_colours(bars)
    legend_rows = -(-len(colours) // 3)
    # the legend has a row of its own under the bars' axis label: it can never cover a card
    heights = [0.45 * len(bars) + 0.9, 0.2 * legend_rows + 0.1, 0.3 * max(len(plan.phases), 1) + 0.8, 4.6]
    fig, (ax1, key, ax3, ax2) = plt.subplots(
        4, 1, figsize=(10, sum(heights) + 0.8), dpi=110, layout="constrained", height_ratios=heights
    )
    for row, (_, terms) in enumerate(bars):
        left = 0.0
        for name, value in sorted(terms.items(), key=lambda kv: -kv[1]):
            if value > 0:
                ax1.barh(row, value / GIB, left=left, color=colours[name], height=0.6)
                left += value / GIB
    ax1.axvline(plan.gpu.memory_bytes / GIB, color="black", ls="--", lw=0.8)
    ax1.set_yticks(range(len(bars)), [b[0] for b in bars])
    ax1.invert_yaxis()
    ax1.set_xlabel(f"GiB (dashed: {plan.gpu.name}, {plan.gpu.memory_bytes / GIB:.2f} GiB)")
    ax1.set_title(f"{plan.model} on {plan.gpu.name}: {'fits' if plan.fits else 'does not fit'}", fontsize=10)
    handles = [matplotlib.patches.Patch(color=c, label=n) for n, c in colours.items()]
    key.axis("off")
    key.legend(handles=handles, fontsize=7, ncol=3, loc="upper center", frameon=False)
    _phases(ax3, plan)
    _scatter(ax2, plan)
    return fig


def _phases(ax: Any, plan: Plan) -> None:
    names = phase_order(plan.phases)
    values = [plan.phases[n] / GIB for n in names]
    peak = plan.peak.phase
    ax.barh(range(len(names)), values, color=["#4c72b0" if n == peak else "#9db4d8" for n in names], height=0.7)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    for tick, name in zip(ax.get_yticklabels(), names, strict=True):
        if name == peak:
            tick.set_fontweight("bold")
    for i, (name, v) in enumerate(zip(names, values, strict=True)):
        ax.annotate(
            f"{v:.2f}" + ("  peak" if name == peak else ""),
            (v, i),
            xytext=(3, 0),
            textcoords="offset points",
            va="center",
            fontsize=7,
        )
    ax.invert_yaxis()
    ax.axvline(plan.gpu.memory_bytes / GIB, color="black", ls="--", lw=0.8)
    ax.set_xlim(0, max([plan.gpu.memory_bytes / GIB, *values]) * 1.15)
    ax.set_xlabel("allocated GiB by phase")


def _scatter(ax: Any, plan: Plan) -> None:
    """The alternatives over the card's range; labels where the page puts them (report_svg's
    placement, as offsets in points at the page's scale), the axes in the page's proportions."""
    pts = chart_points(plan)
    ax.set_xlabel("device memory per GPU (GiB)")
    ax.set_ylabel(f"tokens/s at seq {plan.setup.seq_len} (estimated)")
    if not pts:
        ax.text(0.5, 0.5, "no speeds to chart", transform=ax.transAxes, ha="center")
        return
    g = Scatter.of(plan, pts)
    plot_w, plot_h = g.w - g.left - g.right, g.h - g.top - g.bottom
    ax.set_box_aspect(plot_h / plot_w)
    ax.set_xlim(0, g.xt[-1])
    ax.set_xticks(g.xt)
    ax.set_ylim(0, g.yt[-1])
    ax.set_yticks(g.yt)
    ax.axvline(plan.gpu.memory_bytes / GIB, color="black", ls="--", lw=0.8)
    for a, *_ in g.marks:
        weighed = a in plan.alternatives
        colour = ("#2a9d3a" if a.fits else "#c44e52") if weighed else ("#9fd8a8" if a.fits else "#e8a3a6")
        ax.scatter(
            min(a.device_bytes / GIB, g.xt[-1]),
            a.tokens_per_second,
            s=90 if a.chosen else 30,
            marker=">" if a.device_bytes / GIB > g.xt[-1] else "o",
            color=colour,
            edgecolors="black" if a.chosen else "none",
            clip_on=False,
            zorder=3,
        )
    ax.figure.canvas.draw()  # lays the figure out: the axes' width in points is now final
    scale = ax.get_window_extent().width / ax.figure.dpi * 72 / plot_w  # points per SVG unit
    mid = (ASCENT - DESCENT) * FONT / 2
    for i, text, x, y, anchor, bold in point_labels(plan, g.marks, g.xt[-1], g.card_x, g.area, g.top):
        if i < 0:
            continue
        a, mx, my, _ = g.marks[i]
        ax.annotate(
            text,
            (min(a.device_bytes / GIB, g.xt[-1]), a.tokens_per_second),
            xytext=((x - mx) * scale, -(y - mid - my) * scale),
            textcoords="offset points",
            ha={"start": "left", "middle": "center", "end": "right"}[anchor],
            va="center",
            fontsize=FONT * scale * 0.9,  # matplotlib sets DejaVu a little wider than its advances
            fontweight="bold" if bold else "normal",
            annotation_clip=False,
            in_layout=False,
        )
