"""The real users' ZeRO rows (../shared/data/real_reports.csv by default) planned under their trainer.

Each row is estimated as ``vramplan validate`` does (published.row_setup), but under the policy
of the trainer that ran it (the id's prefix: lf- LLaMA-Factory, swift- ms-swift, else the
generic loop) and so with that trainer's shipped ds_config.json. Fields a row leaves blank take
the trainer's default: gradient accumulation 1, gradient checkpointing on, sdpa.

    PYTHONPATH=$PWD python benchmarks/zero_rows.py [--csv FILE] [--json]
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from vramplan.frameworks import framework
from vramplan.gpus import resolve_gpu
from vramplan.memory import estimate
from vramplan.models import load_model
from vramplan.published import row_setup
from vramplan.units import GIB

IDS = (
    "lf-6752",
    "lf-4133-a100-40g",
    "swift-1859-full-a800",
    "lf-4311",
    "lf-5972-8k",
    "lf-5070-atp",
    "lf-3035",
    "qwen-887-2048",
)
TRAINERS = {"lf": "llamafactory", "swift": "swift"}
DEFAULT_CSV = Path(__file__).resolve().parents[2] / "shared" / "data" / "real_reports.csv"


def plan_row(row: dict[str, str]) -> dict[str, object]:
    filled = dict(row)
    filled["grad_accum"] = row["grad_accum"] or "1"
    filled["grad_checkpointing"] = row["grad_checkpointing"] or "true"
    filled["attention"] = row["attention"] or "sdpa"
    trainer = TRAINERS.get(row["id"].split("-")[0], "hf")
    setup = row_setup(filled)
    spec = load_model(row["model"], hub=False)
    est = estimate(spec, setup, policy=framework(trainer).policy(setup))
    card = resolve_gpu(row["gpu"]).memory_bytes
    terms = {k: round(v / GIB, 2) for k, v in est.terms.items() if k.startswith(("parallel/", "optimizer/", "grad"))}
    return {
        "id": row["id"],
        "trainer": trainer,
        "outcome": row["outcome"],
        "measured": f"{row['measured_value']} {row['measured_unit']}".strip(),
        "phase": est.phase,
        "allocated_gib": round(est.allocated_bytes / GIB, 2),
        "device_gib": round(est.device_bytes / GIB, 2),
        "card_gib": round(card / GIB, 2),
        "verdict": "fits" if est.device_bytes <= card else "does not fit",
        "zero_terms": terms,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--csv", type=Path, default=DEFAULT_CSV)
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    with a.csv.open(newline="", encoding="utf-8") as f:
        rows = {r["id"]: r for r in csv.DictReader(f)}
    out = [plan_row(rows[i]) for i in IDS if i in rows]
    if a.json:
        print(json.dumps(out, indent=1))
        return
    print("| id | trainer | outcome | peak phase | allocated GiB | device GiB | card GiB | verdict |")
    print("|---|---|---|---|---|---|---|---|")
    for r in out:
        cells = [
            r[k] for k in ("id", "trainer", "outcome", "phase", "allocated_gib", "device_gib", "card_gib", "verdict")
        ]
        print("| " + " | ".join(str(c) for c in cells) + " |")


if __name__ == "__main__":
    main()
