"""Trace each family configuration of tests/test_family_traces.py (FAMILY_GRID) not yet
recorded for the installed libraries, one at a time, append the results to
tables/measured/traces.jsonl, and print each against the estimate.

    python benchmarks/trace_families.py [--model NAME] [--out benchmarks/family_traces.md]

The rows are held by tests/test_family_traces.py (and tests/test_estimate_vs_traces.py);
``--out`` writes every recorded row of these models against the estimate as a table.
"""

from __future__ import annotations

import argparse
import sys
import time


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", help="only this catalog model")
    ap.add_argument("--out", help="also write the comparison table of every family row (markdown) to this file")
    args = ap.parse_args()

    from tests.test_family_traces import FAMILY_GRID
    from vramplan.memory import estimate
    from vramplan.memory.phases import traceable_bytes
    from vramplan.models import load_model
    from vramplan.records import append_row, make_row, read_rows, record_key, records_path
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
        append_row(make_row(result), records_path())
        est = traceable_bytes(estimate(load_model(model), setup))
        err = 100 * (est - result.peak_bytes) / result.peak_bytes
        print(
            f"{model} {fields}: traced {result.peak_bytes / 2**30:.3f} GiB at {result.peak_phase},"
            f" estimate {est / 2**30:.3f} GiB ({err:+.2f}%) in {time.perf_counter() - t0:.0f} s",
            flush=True,
        )
    if args.out:
        from tests.test_family_traces import FAMILY_MODELS
        from vramplan.arch.registry import family
        from vramplan.render import validation_markdown
        from vramplan.validate import summarize, traced_rows

        head = "Each family's catalog model traced with fake tensors against the estimate"
        head += " (benchmarks/trace_families.py).\n\n"
        fams = ", ".join(f"{m}: {getattr(family(load_model(m).model_type), 'label', '-')}" for m in FAMILY_MODELS)
        rows = [r for r in traced_rows() if r["model"] in FAMILY_MODELS]
        with open(args.out, "w") as fh:
            fh.write(head + f"Families: {fams}.\n\n" + validation_markdown(summarize(rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
