"""The analytic estimate against traced real training steps recorded in
tables/measured/traces.jsonl (re-traced only on purpose, with `vramplan trace --record`).

Asymmetric: an underestimate crashes a user's run, so it gets the tighter bound.
"""

from __future__ import annotations

import pytest

from vramplan.memory import estimate
from vramplan.memory.phases import traceable_bytes
from vramplan.models import load_model
from vramplan.records import read_rows
from vramplan.setup import Setup

MAX_UNDER = 0.01
MAX_OVER = 0.03


def _traced_rows() -> list[dict]:
    latest: dict[str, dict] = {}
    for row in read_rows():
        if row.get("backend") == "trace" and row.get("outcome") == "ok":
            latest[row["key"]] = row  # the newest row of a key wins
    return list(latest.values())


ROWS = _traced_rows()


def test_there_are_recorded_traces() -> None:
    assert len(ROWS) >= 5


@pytest.mark.parametrize("row", ROWS, ids=[f"{r['model']}-{r['key']}" for r in ROWS])
def test_estimate_matches_trace(row: dict) -> None:
    setup = Setup.model_validate(row["setup"])
    est = traceable_bytes(estimate(load_model(row["model"]), setup))
    traced = row["peak_bytes"]
    err = (est - traced) / traced
    assert -MAX_UNDER <= err <= MAX_OVER, f"estimate {est / 2**30:.3f} GiB vs traced {traced / 2**30:.3f} GiB"
