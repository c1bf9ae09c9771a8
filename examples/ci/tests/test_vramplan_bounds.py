"""A user's own test: the runs measured on our cards stay within our bounds of vramplan's estimates."""

from pathlib import Path

from vramplan.testing import assert_within_bounds

RUNS = Path(__file__).resolve().parents[1] / "runs.csv"


def test_estimates_hold_against_measured_runs() -> None:
    assert_within_bounds(RUNS, max_median_error=5, max_underestimate=10)
