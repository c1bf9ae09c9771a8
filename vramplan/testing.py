"""For a user's own tests: hold recorded runs to bounds, as ``vramplan validate`` does in CI.

    from vramplan.testing import assert_within_bounds

    def test_memory_estimates_hold():
        assert_within_bounds("runs.csv", max_median_error=5, max_underestimate=10)

The CSV is in the published-measurements schema (``tables/measured/README.md``); the rows, the
bounds and the failures are those of ``vramplan validate --csv runs.csv --max-median-error 5
--max-underestimate 10`` (vramplan/gate.py). Torch-free: no pytest import either, a plain
AssertionError is what pytest reports.
"""

from __future__ import annotations

from pathlib import Path

from vramplan.gate import Bounds, GateResult, check, failure_lines

__all__ = ["assert_within_bounds", "gate"]


def gate(
    csv_path: str | Path, *, max_median_error: float | None = None, max_underestimate: float | None = None
) -> GateResult:
    """The gate's result for the runs in ``csv_path`` (bounds in %: 5 means 5%). A file that
    cannot be read, or none of whose rows can be compared, raises VramplanError."""
    from vramplan.published import compare_csv, require_usable, summarize

    bounds = Bounds(max_median_error_pct=max_median_error, max_underestimate_pct=max_underestimate)
    for name, value in (("max_median_error", max_median_error), ("max_underestimate", max_underestimate)):
        if value is not None and not 0 <= value <= 1000:
            raise ValueError(f"{name}={value!r}: give a percentage from 0 to 1000")
    path = Path(csv_path)
    rows = compare_csv(path)
    require_usable(rows, path)
    return check(rows, summarize(rows), bounds)


def assert_within_bounds(
    csv_path: str | Path, *, max_median_error: float | None = None, max_underestimate: float | None = None
) -> GateResult:
    """Raise AssertionError, listing each row out of bounds (id, line, error) and the summary
    line, when the runs in ``csv_path`` break a bound or an out-of-memory row is called a fit;
    otherwise return the result. At least one bound must be given."""
    if max_median_error is None and max_underestimate is None:
        raise ValueError("give max_median_error and/or max_underestimate (in %)")
    result = gate(csv_path, max_median_error=max_median_error, max_underestimate=max_underestimate)
    if not result.ok:
        raise AssertionError("\n".join([f"vramplan estimates out of bounds on {csv_path}:", *failure_lines(result)]))
    return result
