"""What the report's charts are laid out with: text widths, round ticks, and a label placer
that never lets two labels overlap or leave the chart. Pure arithmetic on SVG user units."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

#: Advance widths of DejaVu Sans Book 2.37 (Debian's fonts-dejavu-core: the face fontconfig
#: gives Chromium for ``sans-serif`` here) for ASCII 32..126, in thousandths of an em, read
#: with ``PIL.ImageFont.truetype("DejaVuSans.ttf", 1000).getlength(ch)``. Arial, Helvetica and
#: Liberation Sans are narrower, so a label that fits by these widths fits in them too.
DEJAVU_WIDTHS = (
    318, 401, 460, 838, 636, 950, 780, 275, 390, 390, 500, 838, 318, 361, 318, 337,
    636, 636, 636, 636, 636, 636, 636, 636, 636, 636, 337, 337, 838, 838, 838, 531,
    1000, 684, 686, 698, 770, 632, 575, 775, 752, 295, 295, 656, 557, 863, 748, 787,
    603, 787, 695, 635, 611, 732, 684, 989, 685, 611, 685, 390, 337, 390, 838, 500,
    500, 613, 635, 550, 635, 615, 352, 635, 634, 278, 278, 579, 278, 974, 634, 612,
    635, 635, 411, 521, 392, 634, 592, 818, 592, 592, 525, 636, 337, 636, 838,
)  # fmt: skip
#: DejaVu Sans Bold is at most this much wider than Book, letter for letter
BOLD = 1.12
#: the line box a browser gives one line of text, in ems above and below the baseline
#: (DejaVu Sans: ascender 1901, descender 483 of 2048 units)
ASCENT, DESCENT = 0.93, 0.24

Box = tuple[float, float, float, float]  # x0, y0, x1, y1


def text_width(text: str, size: float, *, bold: bool = False) -> float:
    """The width of ``text`` at font size ``size`` (an em wide for any character outside ASCII)."""
    em = sum(DEJAVU_WIDTHS[ord(c) - 32] if 32 <= ord(c) < 127 else 1000 for c in text) / 1000
    return em * size * (BOLD if bold else 1.0)


def text_box(x: float, y: float, text: str, size: float, anchor: str = "start", *, bold: bool = False) -> Box:
    """The box of a text drawn at baseline ``y`` with ``text-anchor`` ``anchor``."""
    w = text_width(text, size, bold=bold)
    x0 = {"start": x, "middle": x - w / 2, "end": x - w}[anchor]
    return (x0, y - ASCENT * size, x0 + w, y + DESCENT * size)


def overlaps(a: Box, b: Box, gap: float = 0.0) -> bool:
    return a[0] < b[2] + gap and b[0] < a[2] + gap and a[1] < b[3] + gap and b[1] < a[3] + gap


def inside(a: Box, area: Box) -> bool:
    return a[0] >= area[0] and a[1] >= area[1] and a[2] <= area[2] and a[3] <= area[3]


def nice_step(span: float, count: int = 6) -> float:
    """The 1-2-5 step that cuts ``span`` into at most ``count`` parts."""
    if span <= 0:
        return 1.0
    raw = span / count
    power = 10 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= raw)


def nice_ticks(top: float, count: int = 6) -> list[float]:
    """Ticks 0, step, 2 step, ... up to the first at or above ``top`` (1-2-5 steps)."""
    step = nice_step(top, count)
    n = max(1, math.ceil(top / step - 1e-9))
    return [i * step for i in range(n + 1)]


def tick_label(value: float, step: float) -> str:
    return f"{value:,.0f}" if step >= 1 else f"{value:,.{max(0, -math.floor(math.log10(step)))}f}"


@dataclass
class Placer:
    """Labels placed one by one, each at the first candidate position that stays inside
    ``area`` and clear of every box taken so far (labels, markers, reserved text)."""

    area: Box
    size: float
    taken: list[Box] = field(default_factory=list)

    def reserve(self, box: Box) -> None:
        self.taken.append(box)

    def place(self, text: str, candidates: list[tuple[float, float, str]], *, bold: bool = False) -> tuple | None:
        """The first ``(x, y, anchor)`` of ``candidates`` (baseline positions) where ``text``
        fits, now taken; None when none does."""
        for x, y, anchor in candidates:
            box = text_box(x, y, text, self.size, anchor, bold=bold)
            if inside(box, self.area) and not any(overlaps(box, t, 1.0) for t in self.taken):
                self.taken.append(box)
                return x, y, anchor
        return None


def around(x: float, y: float, r: float, size: float, *, far: bool = False) -> list[tuple[float, float, str]]:
    """Label positions around a marker of radius ``r`` at (x, y): right, left, above, below,
    the four corners, then the same a step further out (and two steps more when ``far``)."""
    mid = y + (ASCENT - DESCENT) * size / 2
    out = []
    for d in (r + 4, r + 14, *((r + 28, r + 44) if far else ())):
        out += [
            (x + d, mid, "start"),
            (x - d, mid, "end"),
            (x, y - d - DESCENT * size, "middle"),
            (x, y + d + ASCENT * size, "middle"),
            (x + d * 0.7, y - d * 0.7 - DESCENT * size, "start"),
            (x - d * 0.7, y - d * 0.7 - DESCENT * size, "end"),
            (x + d * 0.7, y + d * 0.7 + ASCENT * size, "start"),
            (x - d * 0.7, y + d * 0.7 + ASCENT * size, "end"),
        ]
    return out
