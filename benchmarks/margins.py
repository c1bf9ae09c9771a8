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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vramplan.verdict import MARGIN_QUANTILE, margins_now  # noqa: E402


def main() -> None:
    table = margins_now()
    out = ROOT / "tables" / "margins.json"
    out.write_text(json.dumps(table, indent=2, sort_keys=True) + "\n")
    q = int(MARGIN_QUANTILE * 100)
    for tier, row in table["tiers"].items():
        print(f"{tier}: {row['pct']:.2f}% (p{q} of {row['rows']} runs)")


if __name__ == "__main__":
    main()
