"""Fit the CUDA-only constants on tables/measured/published.csv and store them.

    python3 benchmarks/calibrate.py [--check]

Prints each fitted constant with the rows it came from and every row's residual, then
writes the values into tables/overheads.json. ``--check`` only compares the stored values
with a fresh fit and exits 1 when they differ (what the test suite holds).
"""

from __future__ import annotations

import sys

from vramplan.calibrate import fit, write
from vramplan.memory.overhead import overhead_constants
from vramplan.published import published_csv


def main() -> int:
    fitted = fit(published_csv())
    stored = overhead_constants()
    for name, f in fitted.items():
        flag = "  [single source]" if f["single_source"] else ""
        print(f"{name} = {f['value']} (stored {stored[name]}){flag}")
        print(f"  fitted on {len(f['fitted_on'])} rows from {', '.join(f['sources'])}")
        for row_id, pct in f["residuals_pct"].items():
            print(f"    row {row_id:>6}: residual {pct:+.2f}%")
    if "--check" in sys.argv:
        drift = [n for n, f in fitted.items() if abs(f["value"] - stored[n]) > 1e-3]
        print("drift: " + (", ".join(drift) or "none"))
        return 1 if drift else 0
    print(f"wrote {write(fitted)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
