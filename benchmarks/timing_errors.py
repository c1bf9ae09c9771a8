"""Fit the time model on published speeds and show its error.

    python3 benchmarks/timing_errors.py [--check]

Rows: tables/measured/speeds.csv (Qwen and Qwen-VL README 'Profiling of Memory and
Speed', s/it = one optimizer step of 8 accumulated micro-batches on one A100-SXM4-80G).
Fitted on the single-GPU rows: the matmul efficiency and a fixed cost per micro-batch;
written to tables/timing.json with the rows and each row's residual. ``--check`` only
compares a fresh fit with the stored values (exit 1 on drift).
"""

from __future__ import annotations

import json
import statistics
import sys

from vramplan.published import published_csv, read_rows
from vramplan.tables import tables_dir
from vramplan.timing import constants, fit, speed_rows


def main() -> int:
    gpus = {r["id"]: r["num_gpus"] for r in read_rows(published_csv())}
    rows = [r for r in speed_rows() if gpus[r.id] == "1"]
    consts, resid = fit(rows)
    eff, over = consts["matmul_efficiency"], consts["seconds_per_micro_batch"]
    errs = sorted(abs(v) for v in resid.values())
    p90 = errs[int(0.9 * (len(errs) - 1))]
    print(
        f"{len(rows)} single-GPU rows: efficiency {eff:.4f}, {over:.4f} s per micro-batch,"
        f" {consts['seconds_per_dequantized_weight']:.3e} s per dequantized weight"
    )
    print(f"|error| median {statistics.median(errs):.1f}%, 90th percentile {p90:.1f}%, max {errs[-1]:.1f}%")
    for r in rows:
        print(f"  row {r.id:>4}: measured {r.seconds:7.2f} s/step, error {resid[r.id]:+6.1f}%")
    if "--check" in sys.argv:
        stored = constants()
        drift = any(abs(stored[k] - float(f"{v:.4g}")) > 1e-6 * max(1.0, abs(v)) for k, v in consts.items())
        print("drift: " + ("yes" if drift else "none"))
        return 1 if drift else 0
    path = tables_dir() / "timing.json"
    data = json.loads(path.read_text())
    ids = [r.id for r in rows]
    for k, v in consts.items():
        data[k] = {
            "value": float(f"{v:.4g}"),
            "fitted_on": ids,
            "source": "github.com/QwenLM/Qwen and QwenLM/Qwen-VL README speed tables (single source)",
        }
    data["matmul_efficiency"]["residuals_pct"] = {k: round(v, 2) for k, v in resid.items()}
    data["error"] = {
        "median_abs_pct": round(statistics.median(errs), 2),
        "p90_abs_pct": round(p90, 2),
        "rows": len(rows),
    }
    path.write_text(json.dumps(data, indent=2) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
