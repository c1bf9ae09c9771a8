"""Trace ms-swift's own swift sft step (vramplan/trace/swift_sft.py) over the swift grid
(vramplan.trace.swift_grid.GRID; run it with ms-swift's venv python, PYTHONPATH=repo) and record each configuration in
tables/measured/swift_traces.jsonl (one JSON row: model, setup, peak, phase, by kind,
versions); then print the estimate-vs-trace table under swift's policy.

    python benchmarks/swift_trace_grid.py [--workers 1] [--limit N] [--out FILE.md]

Configurations already recorded with the same library versions are skipped.
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path


def _trace_one(model: str, fields: dict) -> dict | str:
    import warnings

    warnings.filterwarnings("ignore")
    from vramplan.setup import make_setup
    from vramplan.trace.run import versions
    from vramplan.trace.swift_sft import trace_sft

    try:
        r = trace_sft(model, make_setup(**fields), steps=2)
    except Exception as exc:  # reported, never recorded
        return f"FAILED {type(exc).__name__}: {str(exc)[:300]}"
    return {
        "model": model,
        "setup": fields,
        "trainer": "swift",
        "peak_bytes": r.peak_bytes,
        "peak_phase": r.peak_phase,
        "phases": r.phases,
        "by_kind": r.by_kind,
        "seconds": round(r.seconds, 1),
        "versions": {**versions(), "ms-swift": __import__("swift").__version__},
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--out", help="also write the comparison table (markdown) to this file")
    args = ap.parse_args()
    from vramplan.records import records_path
    from vramplan.trace.swift_grid import GRID, ROWS_FILE, compare, read_rows

    rows_file = records_path(ROWS_FILE)

    done = {(r["model"], json.dumps(r["setup"], sort_keys=True)) for r in read_rows()}
    # the extra configurations (other families, the VLM) first: one of each, then the square grid
    order = GRID[48:] + GRID[:48]
    todo = [(m, f) for m, f in order if (m, json.dumps(f, sort_keys=True)) not in done]
    if args.limit:
        todo = todo[: args.limit]
    with ProcessPoolExecutor(args.workers, max_tasks_per_child=1) as pool:
        futures = {pool.submit(_trace_one, m, f): (m, f) for m, f in todo}
        for fut in as_completed(futures):
            out = fut.result()
            m, f = futures[fut]
            if isinstance(out, str):
                print(m, f, out, file=sys.stderr)
                continue
            with rows_file.open("a") as fh:
                fh.write(json.dumps(out, sort_keys=True) + "\n")
            print(m, f, f"{out['peak_bytes'] / 2**30:.3f} GiB in {out['seconds']} s", file=sys.stderr, flush=True)
    table = compare(read_rows())
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
