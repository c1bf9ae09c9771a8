"""The Setup a measured row describes (the published-measurements schema, vramplan/published.py):
its columns read as the CLI reads flags, and its ``settings`` column for the Setup fields the
columns do not hold. Torch-free."""

from __future__ import annotations

from typing import Any

from vramplan.errors import VramplanError, closest
from vramplan.setup import Setup, make_setup

#: the schema's columns, in order (a row's ``settings`` may not restate one of them)
COLUMNS = (
    "id source trainer trainer_version model method quant precision lora_rank lora_alpha lora_targets trainable_extra "
    "optimizer seq_len lengths micro_batch grad_accum grad_checkpointing attention num_gpus parallel offload gpu "
    "measured_value measured_unit measurement outcome settings notes"
).split()
EMBEDDING_NAMES = {"embeddings", "embed_tokens", "wte", "word_embeddings", "tok_embeddings"}
HEAD_NAMES = {"lm_head", "output"}


def _extra(text: str) -> tuple[str, ...]:
    out = []
    for name in (t.strip() for t in text.split(",") if t.strip()):
        if name in EMBEDDING_NAMES:
            out.append("embeddings")
        elif name in HEAD_NAMES:
            out.append("lm_head")
        else:
            raise VramplanError(
                "trainable_extra",
                f"{name!r}: use embedding/lm_head module names ({', '.join(sorted(EMBEDDING_NAMES | HEAD_NAMES))})",
            )
    return tuple(out)


def row_setup(row: dict[str, str]) -> Setup:
    """The Setup a row describes. Inference rows become a LoRA-free Setup whose fields
    carry precision, quantization, length, batch and layout."""
    method = row["method"]
    quant = row.get("quant") or "none"
    fields: dict[str, Any] = {
        "precision": row["precision"],
        "seq_len": row["seq_len"],
        "micro_batch": row["micro_batch"],
        "attention": row["attention"],
        "num_gpus": row["num_gpus"] or "1",
        "parallel": row.get("parallel") or "none",
        "offload": row.get("offload") or "none",
    }
    if row.get("lengths"):
        fields["lengths"] = row["lengths"]
    if method == "inference":
        fields.update(method="inference", quant=quant, grad_checkpointing=False)
        return make_setup(**fields, **row_settings(row))
    gc = row["grad_checkpointing"].lower()
    if gc not in ("true", "false"):
        raise VramplanError("grad_checkpointing", f"{row['grad_checkpointing']!r}: use true or false")
    fields.update(
        method=method,
        quant=quant,
        grad_checkpointing=gc == "true",
        optimizer=row.get("optimizer") or "adamw",
        grad_accum=row.get("grad_accum") or "1",
    )
    if method in ("lora", "qlora"):
        fields.update(
            lora_targets=row.get("lora_targets") or "all-linear", trainable_extra=_extra(row.get("trainable_extra", ""))
        )
        if row.get("lora_rank"):
            fields["lora_rank"] = row["lora_rank"]
        if row.get("lora_alpha"):
            fields["lora_alpha"] = row["lora_alpha"]
    return make_setup(**fields, **row_settings(row))


def row_settings(row: dict[str, str]) -> dict[str, str]:
    """The ``settings`` column: Setup fields the other columns do not hold, as ``field=value``
    pairs separated by ``;`` (``zero3_init=off;eval_batch=8``), validated as the CLI's flags are."""
    out: dict[str, str] = {}
    for pair in (p.strip() for p in (row.get("settings") or "").split(";") if p.strip()):
        name, eq, value = pair.partition("=")
        name = name.strip()
        if not eq or name not in Setup.model_fields:
            near = closest(name, list(Setup.model_fields))
            hint = f" (closest: {', '.join(near)})" if near else ""
            raise VramplanError("settings", f"{pair!r}: use field=value with a Setup field{hint}")
        if name in COLUMNS:
            raise VramplanError("settings", f"{name} has its own column")
        out[name] = value.strip()
    return out
