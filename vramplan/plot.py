"""The live-memory timeline of a traced run: stacked by what created each storage, with the
peak marked. PNG through matplotlib (the ``plot`` extra), or a self-contained HTML/SVG page
that needs nothing."""

from __future__ import annotations

import functools
import html
from pathlib import Path

from vramplan.errors import VramplanError
from vramplan.files import Content, write_file_atomically
from vramplan.trace.result import TraceResult
from vramplan.units import GIB

CREATORS = ("weights", "trainable_weights", "forward", "backward", "optimizer", "other")
LABELS = {
    "weights": "frozen weights",
    "trainable_weights": "trainable weights",
    "forward": "made in forward (activations)",
    "backward": "made in backward (grads, temporaries)",
    "optimizer": "made in the optimizer step (state)",
    "other": "other",
}
COLOURS = {
    "weights": "#4c72b0",
    "trainable_weights": "#55a868",
    "forward": "#dd8452",
    "backward": "#c44e52",
    "optimizer": "#8172b3",
    "other": "#937860",
}


def _series(result: TraceResult) -> tuple[list[int], dict[str, list[float]]]:
    xs = [p.index for p in result.timeline]
    ys = {c: [p.by_creator.get(c, 0) / GIB for p in result.timeline] for c in CREATORS}
    return xs, {c: v for c, v in ys.items() if any(v)}


def _title(result: TraceResult) -> str:
    s = result.setup
    method = s.method if s.method != "qlora" else f"qlora {s.quant}"
    gc = "GC" if s.grad_checkpointing else "no GC"
    return (
        f"{result.model} {method} {s.precision}, seq {s.seq_len} x mb {s.micro_batch}, {gc}, {s.attention}: "
        f"peak {result.peak_bytes / GIB:.2f} GiB at step {result.peak_step} {result.peak_phase}"
    )


def plot_png(result: TraceResult, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise VramplanError("plot", "a PNG needs matplotlib (pip install 'vramplan[plot]'); or write .html") from None
    xs, ys = _series(result)
    fig, ax = plt.subplots(figsize=(11, 5.5), dpi=110)
    ax.stackplot(xs, *ys.values(), labels=[LABELS[c] for c in ys], colors=[COLOURS[c] for c in ys], alpha=0.9)
    peak_i = max(range(len(xs)), key=lambda i: sum(v[i] for v in ys.values()))
    peak_gib = result.peak_bytes / GIB
    ax.axhline(peak_gib, color="black", lw=0.8, ls="--")
    ax.annotate(
        f"peak {peak_gib:.2f} GiB\n(step {result.peak_step}, {result.peak_phase})",
        xy=(xs[peak_i], peak_gib),
        xytext=(0.02, 0.90),
        textcoords="axes fraction",
        va="top",
        arrowprops={"arrowstyle": "->", "lw": 0.8},
    )
    for step in sorted({p.step for p in result.timeline}):
        first = next(p.index for p in result.timeline if p.step == step)
        ax.axvline(first, color="grey", lw=0.5, ls=":")
    ax.set_xlabel("op (dispatch order)")
    ax.set_ylabel("live memory (GiB)")
    ax.set_title(_title(result), fontsize=9)
    ax.legend(loc="lower right", fontsize=8)
    ax.margins(x=0)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def timeline_svg(result: TraceResult) -> str:
    """The stacked live-memory timeline as an inline SVG element, with its legend."""
    xs, ys = _series(result)
    w, h, pad = 1000, 420, 40
    top = max(result.peak_bytes / GIB, 1e-9) * 1.05
    x0, x1 = (xs[0], xs[-1]) if xs else (0, 1)

    def px(x: float) -> float:
        return pad + (x - x0) / max(x1 - x0, 1) * (w - 2 * pad)

    def py(y: float) -> float:
        return h - pad - y / top * (h - 2 * pad)

    base = [0.0] * len(xs)
    polys = []
    for c, vals in ys.items():
        upper = [b + v for b, v in zip(base, vals, strict=True)]
        pts = [f"{px(x):.1f},{py(y):.1f}" for x, y in zip(xs, upper, strict=True)]
        pts += [f"{px(x):.1f},{py(y):.1f}" for x, y in reversed(list(zip(xs, base, strict=True)))]
        polys.append(
            f'<polygon points="{" ".join(pts)}" fill="{COLOURS[c]}" opacity="0.9">'
            f"<title>{html.escape(LABELS[c])}</title></polygon>"
        )
        base = upper
    legend = "".join(f'<span style="color:{COLOURS[c]}">&#9632;</span> {html.escape(LABELS[c])} &nbsp; ' for c in ys)
    peak_y = py(result.peak_bytes / GIB)
    # scales with the page (viewBox, width 100%): the report shows it at 390 px too
    head = f'<svg class="chart" viewBox="0 0 {w} {h}" width="100%" style="max-width:{w}px;height:auto"'
    head += ' xmlns="http://www.w3.org/2000/svg"'
    return f"""{head} font-family="sans-serif" font-size="11">
{"".join(polys)}
<line x1="{pad}" x2="{w - pad}" y1="{peak_y:.1f}" y2="{peak_y:.1f}" stroke="black" stroke-dasharray="4 3"/>
<text x="{pad + 4}" y="{peak_y - 4:.1f}">peak {result.peak_bytes / GIB:.2f} GiB</text>
<line x1="{pad}" x2="{pad}" y1="{pad}" y2="{h - pad}" stroke="black"/>
<line x1="{pad}" x2="{w - pad}" y1="{h - pad}" y2="{h - pad}" stroke="black"/>
<text x="{w / 2}" y="{h - 8}" text-anchor="middle">op (dispatch order)</text>
<text x="12" y="{h / 2}" transform="rotate(-90 12 {h / 2})" text-anchor="middle">live memory (GiB)</text>
</svg><p style="font-family:sans-serif;font-size:12px">{legend}</p>"""


def page_html(result: TraceResult) -> str:
    """The timeline as a self-contained HTML page."""
    return f"""<!doctype html><meta charset="utf-8"><title>vramplan trace</title>
<h3 style="font-family:sans-serif">{html.escape(_title(result))}</h3>
{timeline_svg(result)}
"""


def plot_html(result: TraceResult, path: Path) -> None:
    write_file_atomically(path, page_html(result), field="plot")


def plot_content(result: TraceResult, path: str | Path) -> Content:
    """What :func:`plot` writes to ``path``: the page's text for .html, a PNG writer for .png."""
    target = Path(path)
    if not result.timeline:
        raise VramplanError("plot", "this result has no timeline to draw")
    if target.suffix.lower() == ".png":
        return functools.partial(plot_png, result)
    if target.suffix.lower() in (".html", ".htm"):
        return page_html(result)
    raise VramplanError("plot", f"write .png or .html, not {target.suffix or 'no extension'}")


def plot(result: TraceResult, path: str | Path) -> Path:
    """Draw ``result``'s timeline to ``path`` (.png or .html), whole or not at all."""
    return write_file_atomically(path, plot_content(result, path), field="plot")
