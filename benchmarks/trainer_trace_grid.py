"""Trace a trainer's own training step (its ``Framework.tracer``: vramplan/trace/<trainer>_sft.py)
over its grid (vramplan.trace.<trainer>_grid.GRID) and record each configuration in
tables/measured/<trainer>_traces.jsonl (one JSON row: model, setup, peak, phase, by kind,
versions); then print the estimate-vs-trace table under the trainer's policy.

    PYTHONPATH=$PWD $PYTHON benchmarks/trainer_trace_grid.py --trainer NAME [--workers 1] [--limit N] [--out FILE.md]

Run it with a Python that has the trainer: this one for trl, the trainer's venv for the others
(``VRAMPLAN_SWIFT_PYTHON``, ``VRAMPLAN_LLAMAFACTORY_PYTHON``, ``VRAMPLAN_AXOLOTL_PYTHON``, built by
.ci/venv-<name>.sh). Configurations already recorded with the same settings are skipped; the
smallest models are traced first. ``--out`` keeps the file's preamble (what the table is, the
versions) and replaces its table.
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from importlib import import_module
from pathlib import Path


def _trace_one(trainer: str, model: str, fields: dict) -> dict | str:
    from importlib import metadata

    from vramplan.frameworks import framework
    from vramplan.setup import make_setup
    from vramplan.trace.quiet import quiet_libraries
    from vramplan.trace.run import versions

    quiet_libraries()
    fw = framework(trainer)
    try:
        r = import_module(fw.tracer).trace_sft(model, make_setup(**fields), steps=2)
    except Exception as exc:  # reported, never recorded
        return f"FAILED {type(exc).__name__}: {str(exc)[:300]}"
    return {
        "model": model,
        "setup": fields,
        "trainer": trainer,
        "peak_bytes": r.peak_bytes,
        "peak_phase": r.peak_phase,
        "phases": r.phases,
        "by_kind": r.by_kind,
        "seconds": round(r.seconds, 1),
        "versions": {**versions(), fw.package: metadata.version(fw.package)},
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trainer", required=True, help="trl, swift, llamafactory or axolotl")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--out", help="also write the comparison table (markdown) to this file")
    args = ap.parse_args()
    from vramplan.models import load_model
    from vramplan.params import param_counts
    from vramplan.records import records_path

    grid = import_module(f"vramplan.trace.{args.trainer}_grid")
    rows_file = records_path(grid.ROWS_FILE)
    done = (
        {(r["model"], json.dumps(r["setup"], sort_keys=True)) for r in grid.read_rows()}
        if rows_file.exists()
        else set()
    )
    todo = [(m, f) for m, f in grid.GRID if (m, json.dumps(f, sort_keys=True)) not in done]
    todo.sort(key=lambda mf: param_counts(load_model(mf[0])).total)  # the quick ones first
    if args.limit:
        todo = todo[: args.limit]
    with ProcessPoolExecutor(args.workers, max_tasks_per_child=1) as pool:
        futures = {pool.submit(_trace_one, args.trainer, m, f): (m, f) for m, f in todo}
        for fut in as_completed(futures):
            out = fut.result()
            m, f = futures[fut]
            if isinstance(out, str):
                print(m, f, out, file=sys.stderr, flush=True)
                continue
            with rows_file.open("a") as fh:
                fh.write(json.dumps(out, sort_keys=True) + "\n")
            print(m, f, f"{out['peak_bytes'] / 2**30:.3f} GiB in {out['seconds']} s", file=sys.stderr, flush=True)
    table = grid.compare(grid.read_rows())
    print(table)
    if args.out:
        out = Path(args.out)
        old = out.read_text().split("| model |")[0] if out.exists() else ""
        out.write_text(old + table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
