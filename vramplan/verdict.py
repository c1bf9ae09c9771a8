"""Fits, tight or does not fit: the estimate against the card, with the margin measured runs ask for.

An estimate is a claim about a real run, and real runs scatter around it. ``tables/margins.json``
(benchmarks/margins.py) holds, for each tier, how far the measured runs compared at that tier
went above their estimates: the 90th percentile of ``(measured - estimate) / estimate`` (0 where
the estimate covered the run). A plan is

- **fits** when the card holds the estimate grown by that margin;
- **tight** when the card holds the estimate but not the margin: one run in ten like it used
  more (the plan says how much room it lacks and the cheapest change that makes it safe);
- **does not fit** when the estimate alone is beyond the card.

The verdict weighs what the card must offer (:func:`needed`: the ``device`` tier, what torch's
allocator reserves plus the CUDA context, less the wholly free cached segments torch releases
and retries with before it reports out of memory) with the margin of the ``reserved`` tier, the
tier its uncertainty comes from. Torch-free.
"""

from __future__ import annotations

import json
import math
from functools import lru_cache
from typing import Any, Literal, Protocol

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


class _Sized(Protocol):
    device_bytes: int
    needed_bytes: int


def needed(est: _Sized) -> int:
    """What the card must offer for ``est`` (an Estimate or one card's): its ``needed_bytes``, the
    device tier without the cached segments torch frees before it reports out of memory
    (memory/lengths.py), or the device tier where an estimate has no such figure."""
    return est.needed_bytes or est.device_bytes


def verdict(need: int, capacity: int) -> Verdict:
    """The verdict on a plan that needs ``need`` bytes of a card offering ``capacity``."""
    if need > capacity:
        return "does not fit"
    return "fits" if safe_bytes(need) <= capacity else "tight"


def safe_capacity(capacity: int) -> int:
    """The most a plan may need and still fit ``capacity`` safely."""
    return math.floor(capacity / (1 + margin_pct() / 100))
