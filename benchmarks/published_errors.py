"""Estimate vs published GPU measurements: the table, then the error by source and method.

    python3 benchmarks/published_errors.py [CSV] > published_errors.md

Markdown of ``vramplan validate --csv`` (tables/measured/published.csv by default).
"""

from __future__ import annotations

import sys
from pathlib import Path

from vramplan.published import compare_csv, published_csv, summarize
from vramplan.render import published_summary_lines
from vramplan.units import GIB


def _f(v: float | None, fmt: str) -> str:
    return "-" if v is None else fmt.format(v)


def main() -> None:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else published_csv()
    rows = compare_csv(path)
    summary = summarize(rows)
    print("| id | model | method | measured | tier | estimate GiB | measured GiB | error % | note |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        note = r.excluded and f"excluded: {r.excluded}"
        if r.outcome == "oom":
            note = "oom, predicted " + ("to fit" if r.fits else "not to fit")
        est = _f(None if r.estimate_bytes is None else r.estimate_bytes / GIB, "{:.2f}")
        meas = _f(None if r.measured_bytes is None else r.measured_bytes / GIB, "{:.2f}")
        print(
            f"| {r.id} | {r.model or '-'} | {r.method} | {r.measurement} | {r.tier} | {est} | {meas} | "
            f"{_f(r.error_pct, '{:+.1f}')} | {note} |"
        )
    print()
    for line in published_summary_lines(summary):
        print(f"- {line}")


if __name__ == "__main__":
    main()
