"""Regenerate tables/measured/reports.csv from shared/data/real_reports.csv.

real_reports.csv holds real users' runs and out-of-memory reports from public threads (and one
benchmark grid), already in the published-measurements schema. Curation adds what the schema's
later columns say and the source rows leave to their notes, row by row below, each read from
the row's own notes (the threads are quoted there):

- ``trainer`` / ``trainer_version``: the program that ran (LLaMA-Factory, ms-swift; blank for a
  plain transformers Trainer script), with the version the thread states or its date implies;
- ``settings``: Setup fields the columns do not hold (vramplan/published.py ``row_settings``);
- ``model``: a catalog name where the hub id is a catalog model's checkpoint under another name;
- ``excluded:`` at the start of ``notes`` for a run the schema cannot describe, with the reason.

Numbers (``measured_value``, its unit and kind, ``outcome``) are never changed.

    python3 benchmarks/curate_reports.py [SHARED_CSV]
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tables" / "measured" / "reports.csv"
DEFAULT_SRC = ROOT.parent / "shared" / "data" / "real_reports.csv"

COLUMNS = (
    "id source trainer trainer_version model method quant precision lora_rank lora_alpha lora_targets trainable_extra "
    "optimizer seq_len micro_batch grad_accum grad_checkpointing attention num_gpus parallel offload gpu "
    "measured_value measured_unit measurement outcome settings notes"
).split()

LF = "llamafactory"
#: id -> the columns curation sets, and why (the reason goes into notes when a row is excluded)
ROWS: dict[str, dict[str, str]] = {
    # Qwen's own finetune.py is a transformers Trainer script; the Int4 checkpoint is qwen-72b's
    # weights in GPTQ int4 (the quant column says so)
    "qwen-852-v100-72b": {"model": "qwen-72b"},
    "lf-2064-bs2": {"trainer": LF, "trainer_version": "0.5"},  # train_bash.py, Jan 2024
    "lf-2064-bs1-256": {"trainer": LF, "trainer_version": "0.5"},
    "lf-2959": {"trainer": LF, "trainer_version": "0.6"},
    # the training arguments are cut off; the 16-bit weights alone exceed the card (the log shows
    # the OOM while loading shards), so the least setting is taken: micro-batch 1 at the then
    # default cutoff_len 1024
    "lf-3027": {"trainer": LF, "trainer_version": "0.6", "seq_len": "1024", "micro_batch": "1", "optimizer": "adamw"},
    # accelerate config: zero3_init_flag false (accelerate before 1.1.0 then loads the whole model on each
    # rank); --evaluation_strategy steps with the then default eval batch (TrainingArguments: 8)
    "lf-3035": {"trainer": LF, "trainer_version": "0.6", "settings": "zero3_init=off;evaluation=loss"},
    "lf-4133-a100-40g": {"trainer": LF, "trainer_version": "0.7.1", "settings": "evaluation=loss"},  # val_size 0.1
    "lf-4311": {"trainer": LF, "trainer_version": "0.8.2", "settings": "evaluation=loss"},  # val_size 0.1
    "lf-5070-atp": {"trainer": LF, "trainer_version": "0.9.3", "settings": "evaluation=loss;eval_batch=1"},
    "lf-5380": {"trainer": LF, "trainer_version": "0.8.4"},
    "lf-5972-8k": {"trainer": LF, "trainer_version": "0.9.1"},
    "lf-6752": {"trainer": LF, "trainer_version": "0.9.1"},
    "lf-7055": {
        "trainer": LF,
        "trainer_version": "0.9.1",
        "excluded": "Liger kernels (enable_liger_kernel: fused linear cross-entropy, RMSNorm, SwiGLU) replace"
        " the logits and the loss chain the estimate counts",
    },
    "lf-7409-1024": {"trainer": LF, "trainer_version": "0.8"},
    "lf-7409-2048": {"trainer": LF, "trainer_version": "0.8"},
    "lf-7409-2048-b2": {"trainer": LF, "trainer_version": "0.8"},
    "lf-7798-5090": {"trainer": LF, "trainer_version": "0.9.3"},
    "lf-8471": {"trainer": LF, "trainer_version": "0.9.3"},
    "llamarecipes-37": {
        "excluded": "torch 2.0's FSDP did not reshard parameters with requires_grad=False after backward (the"
        " maintainer's reply in the thread: fixed in the nightlies of July 2023), so every frozen layer stayed"
        " gathered; vramplan counts FSDP as torch 2.1 and later runs it",
    },
    # MAX_PIXELS=602112 caps each image at 602112 / 28^2 = 768 visual tokens (784x768); one image a
    # sample, the least the custom dataset can hold
    "swift-1859-full-a800": {
        "trainer": "swift",
        "trainer_version": "2",
        "settings": "images_per_sample=1;image_size=784x768",
    },
    "swift-2010": {"trainer": "swift", "trainer_version": "2"},
    "swift-5199": {"trainer": "swift", "trainer_version": "3"},
    "unsloth-pr428-r8-unsloth": {"trainer": "unsloth"},
}


#: configs shipped beside the source rows that are catalog models (the same config.json, key for key)
CATALOG_CONFIGS = {"configs/mistral-7b-v0.1.json": "mistral-7b-v0.1"}


def curate(src: Path) -> list[dict[str, str]]:
    out = []
    with src.open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            change = dict(ROWS.get(row["id"], {}))
            if row["model"] in CATALOG_CONFIGS:
                change.setdefault("model", CATALOG_CONFIGS[row["model"]])
            why = change.pop("excluded", "")
            row = {c: row.get(c, "") for c in COLUMNS} | change
            if why:
                row["notes"] = f"excluded: {why}. {row['notes']}"
            out.append(row)
    return out


def main() -> None:
    src = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_SRC
    rows = curate(src)
    with OUT.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {OUT.relative_to(ROOT)}: {len(rows)} rows")


if __name__ == "__main__":
    main()
