"""Trace each family configuration of tests/test_family_traces.py (FAMILY_GRID) not yet
recorded for the installed libraries, one at a time, append the results to
tables/measured/traces.jsonl, and print each against the estimate.

    python benchmarks/trace_families.py [--model NAME]

The rows are held by tests/test_family_traces.py (and tests/test_estimate_vs_traces.py).
"""

from __future__ import annotations

import argparse
import sys
import time


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", help="only this catalog model")
    args = ap.parse_args()

    from tests.test_family_traces import FAMILY_GRID
    from vramplan.memory import estimate
    from vramplan.memory.phases import traceable_bytes
    from vramplan.models import load_model
    from vramplan.records import append_row, make_row, read_rows, record_key
    from vramplan.setup import make_setup
    from vramplan.trace.run import trace, versions

    vers = versions()
    have = {row.get("key") for row in read_rows()}
    for model, fields in FAMILY_GRID:
        if args.model and model != args.model:
            continue
        setup = make_setup(**fields)
        if record_key(model, setup.model_dump(mode="json"), "trace", vers) in have:
            continue
        t0 = time.perf_counter()
        result = trace(model, setup, steps=2, keep_timeline=False)
        append_row(make_row(result))
        est = traceable_bytes(estimate(load_model(model), setup))
        err = 100 * (est - result.peak_bytes) / result.peak_bytes
        print(
            f"{model} {fields}: traced {result.peak_bytes / 2**30:.3f} GiB at {result.peak_phase},"
            f" estimate {est / 2**30:.3f} GiB ({err:+.2f}%) in {time.perf_counter() - t0:.0f} s",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
