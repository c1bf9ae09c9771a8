"""Trace LLaMA-Factory 0.9.5's own SFT step (vramplan/trace/llamafactory_sft.py) over the
llamafactory grid (vramplan.trace.llamafactory_grid.GRID) and record each configuration in
tables/measured/llamafactory_traces.jsonl (one JSON row: model, setup, peak, phase, by kind,
versions); then print the estimate-vs-trace table under LLaMA-Factory's policy. Runs in the
LLaMA-Factory venv (VRAMPLAN_LLAMAFACTORY_PYTHON, .ci/venv-llamafactory.sh):

    PYTHONPATH=. $VRAMPLAN_LLAMAFACTORY_PYTHON benchmarks/llamafactory_trace_grid.py \
        [--workers 1] [--limit N] [--out FILE.md]

Configurations already recorded with the same settings are skipped.
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path


def _trace_one(model: str, fields: dict) -> dict | str:
    from vramplan.trace.quiet import quiet_libraries

    quiet_libraries()
    from vramplan.setup import make_setup
    from vramplan.trace.llamafactory_sft import trace_sft
    from vramplan.trace.run import versions

    try:
        r = trace_sft(model, make_setup(**fields), steps=2)
    except Exception as exc:  # reported, never recorded
        return f"FAILED {type(exc).__name__}: {str(exc)[:300]}"
    return {
        "model": model,
        "setup": fields,
        "trainer": "llamafactory",
        "peak_bytes": r.peak_bytes,
        "peak_phase": r.peak_phase,
        "phases": r.phases,
        "by_kind": r.by_kind,
        "seconds": round(r.seconds, 1),
        "versions": {**versions(), "llamafactory": __import__("llamafactory").__version__},
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--out", help="also write the comparison table (markdown) to this file")
    args = ap.parse_args()
    from vramplan.records import records_path
    from vramplan.trace.llamafactory_grid import GRID, ROWS_FILE, compare, read_rows

    rows_file = records_path(ROWS_FILE)
    done = {(r["model"], json.dumps(r["setup"], sort_keys=True)) for r in read_rows()} if rows_file.exists() else set()
    todo = [(m, f) for m, f in GRID if (m, json.dumps(f, sort_keys=True)) not in done]
    if args.limit:
        todo = todo[: args.limit]
    with ProcessPoolExecutor(args.workers, max_tasks_per_child=1) as pool:
        futures = {pool.submit(_trace_one, m, f): (m, f) for m, f in todo}
        for fut in as_completed(futures):
            out = fut.result()
            m, f = futures[fut]
            if isinstance(out, str):
                print(m, f, out, file=sys.stderr, flush=True)
                continue
            with rows_file.open("a") as fh:
                fh.write(json.dumps(out, sort_keys=True) + "\n")
            print(m, f, f"{out['peak_bytes'] / 2**30:.3f} GiB in {out['seconds']} s", file=sys.stderr, flush=True)
    table = compare(read_rows())
    print(table)
    if args.out:  # the file's preamble (what the table is, versions) is kept
        out = Path(args.out)
        old = out.read_text().split("| model |")[0] if out.exists() else ""
        out.write_text(old + table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
