"""What every trainer's traced grid shares (vramplan/trace/<trainer>_grid.py): its recorded rows,
the estimate under the trainer's policy against each traced peak, and the comparison table.
Torch-free: the analytic tests read them."""

from __future__ import annotations

import statistics
from typing import Any


def square() -> list[tuple[str, dict[str, Any]]]:
    """The grid every trainer is traced over before its own extras: Qwen2.5-0.5B and 7B x LoRA r8 /
    QLoRA nf4 / full x 512, 2048 tokens x checkpointing on/off x micro-batch 1, 2 (bf16, sdpa, AdamW);
    48 configurations, in this order (the extras name theirs by index)."""
    return [
        (
            model,
            {
                "method": method,
                "quant": "bnb-nf4" if method == "qlora" else "none",
                "precision": "bf16",
                "attention": "sdpa",
                "seq_len": seq,
                "grad_checkpointing": gc,
                "micro_batch": mb,
                **({"lora_rank": 8, "lora_alpha": 16, "lora_targets": "all-linear"} if method != "full" else {}),
            },
        )
        for model in ("qwen2.5-0.5b", "qwen2.5-7b")
        for method in ("lora", "qlora", "full")
        for seq in (512, 2048)
        for gc in (True, False)
        for mb in (1, 2)
    ]


def read_rows(rows_file: str) -> list[dict[str, Any]]:
    """The rows recorded in ``tables/measured/<rows_file>``."""
    from vramplan.records import read_rows as read
    from vramplan.records import records_path

    return read(records_path(rows_file))


def error_pct(row: dict[str, Any], trainer: str) -> float:
    """The estimate under ``trainer``'s policy (less what only CUDA spends) against the traced
    peak of ``row``, in %."""
    from vramplan.frameworks import framework
    from vramplan.memory import estimate
    from vramplan.memory.phases import traceable_bytes
    from vramplan.models import load_model
    from vramplan.setup import make_setup

    setup = make_setup(**row["setup"])
    est = estimate(load_model(row["model"]), setup, policy=framework(trainer).policy(setup))
    return 100 * (traceable_bytes(est) - row["peak_bytes"]) / row["peak_bytes"]


def _method(s: dict[str, Any]) -> str:
    """The method with what else moves memory: the quantization, trained embeddings, dropout."""
    text = s["method"] + (f" {s['quant']}" if s["method"] == "qlora" else "")
    text += " +emb" if s.get("trainable_extra") else ""
    return text + (f" dropout {s['lora_dropout']}" if "lora_dropout" in s else "")


def compare(rows: list[dict[str, Any]], trainer: str) -> str:
    """The rows' estimate-vs-trace table (markdown) under ``trainer``'s policy, and its summary line."""
    lines = [
        "| model | method | precision | attention | seq | gc | mb | traced GiB | phase | error % |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    errors = []
    for r in rows:
        s, err = r["setup"], error_pct(r, trainer)
        errors.append(err)
        lines.append(
            f"| {r['model']} | {_method(s)} | {s['precision']} | {s.get('attention', 'sdpa')} | {s['seq_len']}"
            f" | {s['grad_checkpointing']} | {s['micro_batch']} | {r['peak_bytes'] / 2**30:.3f} | {r['peak_phase']}"
            f" | {err:+.2f} |"
        )
    if errors:
        lines.append(
            f"\n{len(errors)} configurations: median |error| {statistics.median(abs(e) for e in errors):.2f}%,"
            f" worst over {max(errors):+.2f}%, worst under {min(errors):+.2f}%"
        )
    return "\n".join(lines)
