"""The report laid out by headless Chromium at 1280 and 390 px wide: the page's own script
writes every SVG label's box (``data-boxes``) and the page's width against the window
(``data-scroll``); no two labels may overlap, none may leave its chart, the page may not
scroll sideways, and a screenshot at each width is not blank.

Chromium's headless window is at least 500 px wide, so the 390 px view is the page inside a
390 px frame (``srcdoc``: same origin, so the frame's boxes are copied out for --dump-dom)."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from itertools import combinations
from pathlib import Path

import pytest

from vramplan import plan
from vramplan.report import report_html

pytestmark = pytest.mark.e2e

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "report-qwen2.5-7b-lora-4090d.html"
WIDTHS = (1280, 390)

HARNESS = """<!doctype html><html><head><meta charset="utf-8"><style>body {{ margin: 0 }}</style></head><body>
<iframe id="f" style="width:{width}px;height:6000px;border:0" srcdoc="{page}"></iframe>
<script>
window.addEventListener("load", function () {{
  var doc = document.getElementById("f").contentDocument, out = [];
  doc.querySelectorAll("svg.chart").forEach(function (svg) {{ out.push(svg.getAttribute("data-boxes")); }});
  document.body.setAttribute("data-frame-boxes", JSON.stringify(out));
  document.body.setAttribute("data-scroll", doc.body.getAttribute("data-scroll") || "");
  document.body.setAttribute("data-charts", doc.body.getAttribute("data-charts") || "");
}});
</script></body></html>"""


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return str(shutil.which(name))
    if os.environ.get("CI"):
        pytest.fail("chromium is not installed: .ci/run installs Debian's chromium package")
    pytest.skip("chromium is not installed here")


def _browser(*args: str) -> subprocess.CompletedProcess:
    common = [_chromium(), "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    return subprocess.run([*common, *args], capture_output=True, text=True, timeout=120, check=True)


def _page_at(page: Path, width: int, tmp_path: Path) -> Path:
    """``page`` as the browser shows it ``width`` px wide: itself, or inside a frame that wide."""
    if width >= 500:
        return page
    framed = tmp_path / f"{page.stem}-{width}.html"
    framed.write_text(HARNESS.format(width=width, page=html.escape(page.read_text(), quote=True)))
    return framed


def _layout(target: Path, width: int) -> tuple[list[dict], int, int]:
    """Each chart's boxes, and the page's scroll width and window width, read from the DOM."""
    dom = _browser(f"--window-size={max(width, 500)},1000", "--dump-dom", target.as_uri()).stdout
    scroll = re.search(r'data-scroll="(\d+) (\d+)"', dom)
    assert scroll, dom[-500:]
    framed = re.search(r'data-frame-boxes="([^"]*)"', dom)
    if framed:
        charts = [json.loads(b) for b in json.loads(html.unescape(framed.group(1)))]
    else:
        charts = [json.loads(html.unescape(b)) for b in re.findall(r'data-boxes="([^"]*)"', dom)]
    return charts, int(scroll.group(1)), int(scroll.group(2))


def _problems(chart: dict) -> list[str]:
    """Labels that overlap another or leave the chart (half a pixel of rounding allowed)."""
    w, h = chart["chart"]
    out = []
    for x0, y0, x1, y1, text, *bar in chart["texts"]:
        if x0 < -0.5 or y0 < -0.5 or x1 > w + 0.5 or y1 > h + 0.5:
            out.append(f"{text!r} leaves the {w:.0f}x{h:.0f} chart: {x0:.1f},{y0:.1f}..{x1:.1f},{y1:.1f}")
        if bar and (x0 < bar[0][0] - 0.5 or x1 > bar[0][2] + 0.5):
            out.append(f"{text!r} is cut by the end of its bar: {x1:.1f} > {bar[0][2]:.1f}")
    for a, b in combinations(chart["texts"], 2):
        if a[0] < b[2] - 0.5 and b[0] < a[2] - 0.5 and a[1] < b[3] - 0.5 and b[1] < a[3] - 0.5:
            out.append(f"{a[4]!r} overlaps {b[4]!r}")
    return out


def _not_blank(shot: Path) -> int:
    from PIL import Image

    img = Image.open(shot).convert("RGB")
    raw = img.tobytes()
    return sum(1 for r, g, b in zip(raw[0::3], raw[1::3], raw[2::3], strict=True) if abs(r - g) > 40 or abs(g - b) > 40)


def traced_page(p) -> str:
    """``p``'s page as ``trace --report`` writes it, for a made-up trace of two steps."""
    from vramplan.plot import timeline_svg
    from vramplan.report import report_page
    from vramplan.trace.result import TimelinePoint, TraceResult

    top = p.peak.allocated_bytes
    points = [
        TimelinePoint(
            index=i,
            step=i // 100,
            phase=("forward", "backward", "optimizer")[min(i % 100 // 40, 2)],
            by_creator={"weights": top // 2, "forward": (i % 100) * top // 250},
        )
        for i in range(200)
    ]
    phases = {f"step{s}/{ph}": int(v * top) for s in (0, 1) for ph, v in (("forward", 0.93), ("backward", 0.98))}
    result = TraceResult(
        model=p.model, setup=p.setup, backend="trace", steps=2, peak_bytes=phases["step0/backward"],
        peak_phase="backward", peak_step=0, by_kind={}, phases=phases, largest=[], timeline=points, seconds=1.0,
        versions={},
    )  # fmt: skip
    return report_page(p, timeline_svg=timeline_svg(result), traced_phases=result.phases)


PAGES = {
    "example": None,  # examples/, the page of SCENARIOS.md case 3
    "traced": dict(model="qwen2.5-0.5b", gpu="4090", method="lora", trace=True),
    "device_map": dict(model="qwen2.5-7b", gpu="4090", method="lora", num_gpus=3, parallel="device_map"),
    "full_over": dict(model="llama-3.1-8b", gpu="4090", method="full", seq_len=4096),
    "evaluates": dict(model="qwen2.5-7b", gpu="4090d", method="lora", evaluation="loss"),  # a fifth phase
}


@pytest.mark.parametrize("name", list(PAGES))
@pytest.mark.parametrize("width", WIDTHS)
def test_labels_clear_and_page_fits_the_width(name: str, width: int, tmp_path: Path) -> None:
    page = tmp_path / f"{name}.html"
    kwargs = PAGES[name]
    if kwargs is None:
        page.write_text(EXAMPLE.read_text())
    else:
        kwargs = dict(kwargs)
        traced = kwargs.pop("trace", False)
        p = plan(kwargs.pop("model"), kwargs.pop("gpu"), **kwargs)
        page.write_text(traced_page(p) if traced else report_html(p))
    target = _page_at(page, width, tmp_path)
    charts, scroll, window = _layout(target, width)
    assert len(charts) >= 3 and all(c["texts"] for c in charts)  # by term, by phase, alternatives
    assert scroll <= window, f"the page scrolls sideways at {width} px: {scroll} > {window}"
    if width == 1280:  # the first screen (720 px) holds the verdict and the first chart
        assert charts[0]["top"] < 720 - charts[0]["chart"][1]
    problems = [p for c in charts for p in _problems(c)]
    assert problems == []
    # the charts scale: each is no wider than the page's column
    assert all(c["chart"][0] <= width for c in charts)
    shot = tmp_path / f"{name}-{width}.png"
    _browser(f"--window-size={max(width, 500)},1600", f"--screenshot={shot}", target.as_uri())
    assert _not_blank(shot) > 3000  # the charts' coloured bars and markers


def test_problems_finds_an_overlap_and_a_label_outside() -> None:
    """The checker itself: two crossing labels and one past the right edge are reported."""
    chart = {
        "chart": [100, 50],
        "texts": [
            [0, 0, 40, 14, "a"],
            [30, 5, 60, 19, "b"],
            [90, 30, 120, 44, "c"],
            [0, 30, 30, 44, "d", [0, 28, 20, 46]],
        ],
    }
    found = _problems(chart)
    assert any("overlaps" in p for p in found) and any("'c' leaves" in p for p in found)
    assert any("'d' is cut" in p for p in found)
