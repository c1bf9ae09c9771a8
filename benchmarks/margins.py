"""Write tables/margins.json: how much more than the estimate real runs used, at each tier.

The verdict (vramplan/verdict.py) calls a plan *tight* when the card holds its estimate but
not the estimate grown by the margin its tier's measured runs ask for. The margin at a tier is
the 90th percentile, over the measured runs compared at that tier, of how far the measured
peak exceeded the estimate, in % of the estimate (0 for a run the estimate covered): one
measured run in ten used more than the estimate plus this margin.

- ``reserved``: the published runs (tables/measured/published.csv, each under its trainer's
  policy, as ``vramplan validate`` compares them) measured as ``max_memory_reserved`` or an
  unstated kind (compared with the reserved estimate).
- ``allocated``: the published runs measured as ``max_memory_allocated`` and every traced
  configuration of the trainers' own steps (tables/measured/<trainer>_traces.jsonl).

Run ``python benchmarks/margins.py`` after the estimates or the measured tables change;
tests/test_verdict.py holds the table to what this script computes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vramplan.comparison import quantile  # noqa: E402
from vramplan.frameworks import names  # noqa: E402
from vramplan.published import compare_csv, published_csv  # noqa: E402
from vramplan.trace.grids import error_pct, read_rows  # noqa: E402
from vramplan.validate import summarize, traced_rows  # noqa: E402
from vramplan.verdict import MARGIN_QUANTILE  # noqa: E402


def _above_pct(estimate: int, measured: int) -> float:
    """How far ``measured`` went above ``estimate``, in % of the estimate (0 when below)."""
    return max(0.0, 100.0 * (measured - estimate) / estimate)


def margins_now() -> dict[str, Any]:
    """The margins the measured tables give today (what tables/margins.json should hold)."""
    above: dict[str, list[float]] = {"allocated": [], "reserved": []}
    for r in compare_csv(published_csv()):
        if r.counted and r.tier in above and r.estimate_bytes and r.measured_bytes:
            above[r.tier].append(_above_pct(r.estimate_bytes, r.measured_bytes))
    errs = [c.error_pct for c in summarize(traced_rows()).rows]  # the generic loop's traces (traces.jsonl)
    for trainer in names():
        if trainer != "hf":
            errs += [error_pct(row, trainer) for row in read_rows(f"{trainer}_traces.jsonl")]
    # error = (estimate - traced) / traced, %: the traced peak is 1 / (1 + error) of the estimate
    above["allocated"] += [max(0.0, 100.0 * (1 / (1 + e / 100) - 1)) for e in errs]
    traced = len(errs)
    sources = {
        "allocated": f"tables/measured/published.csv (max_memory_allocated) and {traced} traced steps "
        "(tables/measured/traces.jsonl and <trainer>_traces.jsonl)",
        "reserved": "tables/measured/published.csv (max_memory_reserved and unstated kinds)",
    }
    return {
        "quantile": MARGIN_QUANTILE,
        "tiers": {
            tier: {"pct": round(quantile(v, MARGIN_QUANTILE), 2), "rows": len(v), "source": sources[tier]}
            for tier, v in above.items()
        },
    }


def main() -> None:
    table = margins_now()
    out = ROOT / "tables" / "margins.json"
    out.write_text(json.dumps(table, indent=2, sort_keys=True) + "\n")
    q = int(MARGIN_QUANTILE * 100)
    for tier, row in table["tiers"].items():
        print(f"{tier}: {row['pct']:.2f}% (p{q} of {row['rows']} runs)")


if __name__ == "__main__":
    main()
