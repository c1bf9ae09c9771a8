"""Fits, tight or does not fit: the estimate against the card, with the margin measured runs ask for.

An estimate is a claim about a real run, and real runs scatter around it. ``tables/margins.json``
(benchmarks/margins.py) holds, for each tier, how far the measured runs compared at that tier
went above their estimates: the 90th percentile of ``(measured - estimate) / estimate`` (0 where
the estimate covered the run). A plan is

- **fits** when the card holds the estimate grown by that margin;
- **tight** when the card holds the estimate but not the margin: one run in ten like it used
  more (the plan says how much room it lacks and the cheapest change that makes it safe);
- **does not fit** when the estimate alone is beyond the card.

The verdict weighs what the card must offer (the estimate's ``device`` tier: what torch's
allocator reserves plus the CUDA context) with the margin of the ``reserved`` tier, the tier
its uncertainty comes from. Torch-free.
"""

from __future__ import annotations

import json
import math
from functools import lru_cache
from typing import Any, Literal

from vramplan.tables import tables_dir

Verdict = Literal["fits", "tight", "does not fit"]
#: the measured runs one in ten of which may go beyond the margin
MARGIN_QUANTILE = 0.9
#: the tier whose margin the verdict applies to the device estimate
VERDICT_TIER = "reserved"


@lru_cache(maxsize=1)
def margins() -> dict[str, Any]:
    """tables/margins.json as written by benchmarks/margins.py."""
    return json.loads((tables_dir() / "margins.json").read_text())


def margin_pct(tier: str = VERDICT_TIER) -> float:
    """The margin (% of the estimate) the measured runs at ``tier`` ask for."""
    return float(margins()["tiers"][tier]["pct"])


def safe_bytes(need: int, tier: str = VERDICT_TIER) -> int:
    """``need`` grown by the tier's margin: what a card must offer for the plan to be safe."""
    return math.ceil(need * (1 + margin_pct(tier) / 100))


def verdict(need: int, capacity: int) -> Verdict:
    """The verdict on a plan that needs ``need`` bytes of a card offering ``capacity``."""
    if need > capacity:
        return "does not fit"
    return "fits" if safe_bytes(need) <= capacity else "tight"


def safe_capacity(capacity: int) -> int:
    """The most a plan may need and still fit ``capacity`` safely."""
    return math.floor(capacity / (1 + margin_pct() / 100))


def _above_pct(estimate: int, measured: int) -> float:
    """How far ``measured`` went above ``estimate``, in % of the estimate (0 when below)."""
    return max(0.0, 100.0 * (measured - estimate) / estimate)


def _quantile(values: list[float], q: float) -> float:
    s = sorted(values)
    k = (len(s) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def margins_now() -> dict[str, Any]:
    """The margins the measured tables give today (what tables/margins.json should hold)."""
    from vramplan.frameworks import names
    from vramplan.published import compare_csv, published_csv
    from vramplan.trace.grids import error_pct, read_rows
    from vramplan.validate import summarize, traced_rows

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
            tier: {"pct": round(_quantile(v, MARGIN_QUANTILE), 2), "rows": len(v), "source": sources[tier]}
            for tier, v in above.items()
        },
    }
