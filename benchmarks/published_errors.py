"""Estimate vs published GPU measurements: the table, then the error by source and method.

    python3 benchmarks/published_errors.py [CSV] > published_errors.md

Markdown of ``vramplan validate --csv`` (tables/measured/published.csv by default).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vramplan.errors import VramplanError
from vramplan.published import compare_csv, published_csv, require_usable, summarize
from vramplan.render import published_note, published_summary_lines
from vramplan.units import GIB


def _f(v: float | None, fmt: str) -> str:
    return "-" if v is None else fmt.format(v)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("csv", nargs="?", type=Path, default=published_csv(), help="a CSV in published.csv's schema")
    path = ap.parse_args().csv
    try:
        rows = compare_csv(path)
        require_usable(rows, path)
    except VramplanError as exc:
        print(f"error: {exc.field}: {exc.message}", file=sys.stderr)
        return 2
    summary = summarize(rows)
    print("| id | model | method | measured | tier | estimate GiB | measured GiB | error % | note |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        note = published_note(r).replace("|", "\\|")
        est = _f(None if r.estimate_bytes is None else r.estimate_bytes / GIB, "{:.2f}")
        meas = _f(None if r.measured_bytes is None else r.measured_bytes / GIB, "{:.2f}")
        rid = r.id or f"(line {r.line})"
        print(
            f"| {rid} | {r.model or '-'} | {r.method} | {r.measurement} | {r.tier} | {est} | {meas} | "
            f"{_f(r.error_pct, '{:+.1f}')} | {note} |"
        )
    print()
    for line in published_summary_lines(summary):
        print(f"- {line}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
