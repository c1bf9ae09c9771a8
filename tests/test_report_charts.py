"""The report's charts as data: round ticks, the scatter on the card's range with setups beyond
it clipped to the edge, labels placed clear of each other, bar labels only where they fit,
the legend listing every term on any card, the peak by phase marked, and the PNG's legend
below its bars."""

from __future__ import annotations

import re
from itertools import combinations

import pytest

from vramplan import plan
from vramplan.report_layout import Placer, around, nice_ticks, overlaps, text_box, text_width
from vramplan.report_svg import (
    Scatter,
    alternatives_svg,
    beside_trace_svg,
    chart_points,
    peak_bars_svg,
    phases_svg,
    point_labels,
    x_range,
)
from vramplan.units import GIB

CASE3 = dict(method="lora", lora_rank=8, lora_alpha=32, micro_batch=1, grad_accum=16, seq_len=2048)


@pytest.fixture(scope="module")
def case3():
    return plan("qwen2.5-7b", "4090d", grad_checkpointing=True, **CASE3)


@pytest.fixture(scope="module")
def full_over():
    return plan("llama-3.1-8b", "4090", method="full", seq_len=4096)


@pytest.fixture(scope="module")
def three_cards():
    return plan("qwen2.5-7b", "4090", method="lora", num_gpus=3, parallel="device_map")


@pytest.mark.parametrize(
    ("top", "ticks"),
    [(28.0, [0, 5, 10, 15, 20, 25, 30]), (1447.0, [0, 500, 1000, 1500]), (0.8, [0, 0.2, 0.4, 0.6, 0.8])],
)
def test_ticks_step_by_one_two_five(top: float, ticks: list[float]) -> None:
    assert nice_ticks(top) == pytest.approx(ticks)


def test_text_width_is_dejavu_sans() -> None:
    # DejaVu Sans at 1000 units: "m" 974, "i" 278, digits 636
    assert text_width("mi0", 10) == pytest.approx((974 + 278 + 636) / 100)
    assert text_width("mb1", 12, bold=True) > text_width("mb1", 12)


def test_placer_never_overlaps_and_stays_inside() -> None:
    placer = Placer((0, 0, 200, 100), 12)
    placed = [placer.place("label long", around(100, 50, 5, 12)) for _ in range(12)]
    boxes = [text_box(x, y, "label long", 12, a) for x, y, a in filter(None, placed)]
    assert 2 <= len(boxes) < 12  # some fit, not all
    assert not any(overlaps(a, b) for a, b in combinations(boxes, 2))
    assert all(b[0] >= 0 and b[1] >= 0 and b[2] <= 200 and b[3] <= 100 for b in boxes)


def _texts(svg: str) -> list[str]:
    return re.findall(r"<text[^>]*>([^<]*)</text>", svg)


def test_scatter_axis_is_the_cards_range_with_clipped_setups(full_over) -> None:
    ticks = x_range(full_over)
    card = full_over.gpu.memory_bytes / GIB
    assert ticks[-1] >= card and ticks[-1] < card * 1.2 + (ticks[1] - ticks[0])
    pts = chart_points(full_over)
    beyond = [p for p in pts if p.device_bytes / GIB > ticks[-1]]
    assert beyond  # every full setup is beyond a 4090
    svg = alternatives_svg(full_over)
    assert svg.count("<path d=") == len(beyond)  # drawn as triangles at the edge
    labels = _texts(svg)
    x_ticks = re.findall(r'<text x="[\d.]+" y="344.0" text-anchor="middle">([\d.]+)</text>', svg)
    assert [float(t) for t in x_ticks] == ticks  # none past the axis
    assert any(t.endswith(f"{p.device_bytes / GIB:.2f} GiB") for t in labels for p in beyond)  # their value named


def test_scatter_labels_clear_of_each_other_and_the_markers(case3, full_over, three_cards) -> None:
    for p in (case3, full_over, three_cards):
        pts = chart_points(p)
        g = Scatter.of(p, pts)
        marks = g.marks
        out = point_labels(p, marks, g.xt[-1], g.card_x, g.area, g.top)
        boxes = [text_box(x, y, t, 12, a, bold=b) for _, t, x, y, a, b in out]
        assert not any(overlaps(a, b) for a, b in combinations(boxes, 2))
        dots = [(x - r, y - r, x + r, y + r) for _, x, y, r in marks]
        assert not any(overlaps(b, d) for b in boxes for d in dots)
        assert any(i >= 0 and pts[i].chosen for i, *_ in out)  # the chosen setup is always named


def test_bar_labels_fit_their_segment_and_legend_has_every_term(three_cards) -> None:
    svg = peak_bars_svg(three_cards)
    inside = 0
    for x, width in re.findall(r'<rect x="([\d.]+)" y="\d+" width="([\d.]+)"', svg):
        inner = re.search(rf'<text x="{float(x) + 4:.1f}" y="[\d.]+" fill="white" class="in">([^<]*)</text>', svg)
        if inner:
            inside += 1
            assert text_width(inner.group(1), 12) + 8 <= float(width)
    assert inside >= 3  # "frozen" and "saved" fit on the cards' long segments
    legend = svg.split('<p class="legend">')[1]
    terms = {name for c in three_cards.cards for name, v in c.terms.items() if v > 0}
    assert terms and all(f"{name} " in legend for name in terms)


def test_phases_chart_names_every_phase_and_marks_the_peak(case3) -> None:
    svg = phases_svg(case3)
    texts = _texts(svg)
    assert set(case3.phases) <= set(texts)
    peak = case3.peak.phase
    assert re.search(rf'font-weight="bold">{peak}</text>', svg)
    assert f"{case3.phases[peak] / GIB:.2f}  peak" in texts


def test_beside_trace_pairs_each_traced_phase(case3) -> None:
    traced = {"step0/forward": 14 * GIB, "step1/forward": 15 * GIB, "step0/backward": 15 * GIB}
    svg = beside_trace_svg(case3, traced)
    assert "15.00" in _texts(svg)  # the larger of the two forward steps
    assert {"forward", "backward"} <= set(_texts(svg)) and "optimizer" not in _texts(svg)


def test_png_legend_below_the_bars_lists_every_term(three_cards) -> None:
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    from vramplan.report_png import plan_figure

    fig = plan_figure(three_cards)
    try:
        fig.canvas.draw()
        bars = fig.axes[0]
        (legend,) = [ax.get_legend() for ax in fig.axes if ax.get_legend()]
        names = {t.get_text() for t in legend.get_texts()}
        assert names == {n for c in three_cards.cards for n, v in c.terms.items() if v > 0}
        renderer = fig.canvas.get_renderer()
        box, axes = legend.get_window_extent(renderer), bars.get_window_extent(renderer)
        labels = bars.xaxis.label.get_window_extent(renderer)
        assert box.y1 <= min(axes.y0, labels.y0)  # below the bars and their axis label, clear of every card
    finally:
        plt.close(fig)


def test_trace_report_puts_the_estimate_beside_the_trace(case3) -> None:
    from vramplan.report import report_html

    page = report_html(case3, traced_phases={"step0/backward": 15 * GIB}, timeline_svg='<svg class="chart"></svg>')
    beside = page.index("The trace beside the estimate")
    assert page.index("Peak by phase") < beside < page.index("Alternatives: memory and speed")
    assert page.index('aria-label="the estimate beside the trace"') > beside


def test_phases_chart_shows_every_phase_a_plan_has_in_run_order() -> None:
    p = plan("qwen2.5-7b", "4090d", method="lora", evaluation="loss")
    names = [t for t in _texts(phases_svg(p)) if t in p.phases]
    assert names == ["forward_end", "backward_start", "backward", "optimizer_step", "evaluate"]
