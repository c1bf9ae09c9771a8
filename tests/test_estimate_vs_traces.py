"""Each recorded trace (tables/measured/traces.jsonl) against the analytic estimate, one test
per configuration, so a failure names the configuration.

Asymmetric: an underestimate crashes a user's run, so it gets the tighter bound.
"""

from __future__ import annotations

import pytest

from vramplan.validate import compare_row, traced_rows

MAX_UNDER_PCT = 1.0
MAX_OVER_PCT = 3.0

ROWS = traced_rows()


@pytest.mark.parametrize("row", ROWS, ids=[f"{r['model']}-{r['key']}" for r in ROWS])
def test_estimate_matches_trace(row: dict) -> None:
    c = compare_row(row)
    assert -MAX_UNDER_PCT <= c.error_pct <= MAX_OVER_PCT, (
        f"estimate {c.estimate_bytes / 2**30:.3f} GiB vs traced {c.traced_bytes / 2**30:.3f} GiB"
    )
