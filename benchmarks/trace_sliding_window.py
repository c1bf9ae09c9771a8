"""Trace each sliding-window configuration of tests/test_sliding_window_traces.py
(SLIDING_GRID: Mistral-7B-v0.1 LoRA at 1024, 4096, 8192 tokens; Phi-3-mini past its window) not yet recorded for the
installed libraries, one at a time, append the results to tables/measured/traces.jsonl, and
print each against the estimate.

    python benchmarks/trace_sliding_window.py

The rows are held by tests/test_sliding_window_traces.py (and tests/test_estimate_vs_traces.py).
"""

from __future__ import annotations

import sys
import time


def main() -> int:
    from tests.test_sliding_window_traces import SLIDING_GRID
    from vramplan.memory import estimate
    from vramplan.memory.phases import traceable_bytes
    from vramplan.models import load_model
    from vramplan.records import append_row, make_row, read_rows, record_key
    from vramplan.setup import make_setup
    from vramplan.trace.run import trace, versions

    vers = versions()
    have = {row.get("key") for row in read_rows()}
    for model, fields in SLIDING_GRID:
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
