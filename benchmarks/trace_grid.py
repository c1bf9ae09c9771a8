"""Trace every grid configuration not yet recorded (vramplan.validate.GRID) and append the
results to tables/measured/traces.jsonl; then print the comparison table.

    python benchmarks/trace_grid.py [--workers 2] [--limit N] [--out FILE.md]

Re-run after a transformers/PEFT/bitsandbytes upgrade: the record key includes the library
versions, so new versions trace anew and old rows stay as history.
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed


def _trace_one(model: str, fields: dict) -> tuple[str, str]:
    from vramplan.records import append_row, make_row, records_path
    from vramplan.setup import make_setup
    from vramplan.trace.run import trace

    try:
        result = trace(model, make_setup(**fields), steps=2, keep_timeline=False)
    except Exception as exc:  # reported, never recorded
        return model, f"FAILED {type(exc).__name__}: {str(exc)[:200]}"
    append_row(make_row(result), records_path())
    return model, f"{result.peak_bytes / 2**30:.3f} GiB at {result.peak_phase} in {result.seconds:.1f} s"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--limit", type=int, default=0, help="trace at most N missing configurations")
    ap.add_argument("--out", help="also write the comparison table (markdown) to this file")
    args = ap.parse_args()

    from vramplan.errors import VramplanError
    from vramplan.records import read_rows, record_key
    from vramplan.setup import RETIRED_FIELDS, make_setup
    from vramplan.trace.run import versions
    from vramplan.validate import GRID

    def key(model: str, setup: dict, backend: str, vers: dict) -> str:
        # a row recorded before a Setup field existed holds that field's default
        fields = {k: v for k, v in setup.items() if k not in RETIRED_FIELDS}
        return record_key(model, make_setup(**fields).model_dump(mode="json"), backend, vers)

    def recorded(row: dict) -> str | None:
        try:
            return key(row["model"], row["setup"], row["backend"], row["versions"])
        except (KeyError, TypeError, VramplanError):  # a record without these fields, as validate skips it
            return None

    have = {recorded(row) for row in read_rows()}
    vers = versions()
    missing = [(m, f) for m, f in GRID if key(m, f, "trace", vers) not in have]
    if args.limit:
        missing = missing[: args.limit]
    print(f"{len(GRID)} configurations, {len(missing)} to trace", flush=True)
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        futures = {pool.submit(_trace_one, m, f): (m, f) for m, f in missing}
        for fut in as_completed(futures):
            model, message = fut.result()
            print(f"{model} {futures[fut][1]}: {message}", flush=True)
    print(f"traced in {time.perf_counter() - t0:.0f} s", flush=True)

    from vramplan.render import validation_markdown
    from vramplan.validate import summarize, traced_rows

    table = validation_markdown(summarize(traced_rows()))
    print(table)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
