"""Estimates against measured GPU runs: any CSV in the published-measurements schema.

The schema (``tables/measured/published.csv`` and a user's own runs):

    id, source, model, method, quant, precision, lora_rank, lora_alpha, lora_targets,
    trainable_extra, optimizer, seq_len, micro_batch, grad_accum, grad_checkpointing,
    attention, num_gpus, parallel, offload, gpu, measured_value, measured_unit,
    measurement, outcome, notes

``model`` is a catalog name or a path to a config.json relative to the CSV. A row is left
out of the statistics, with its reason shown, when its notes start with ``excluded:`` or
when a field the estimate needs is blank. ``measurement`` picks the tier compared:
allocated, reserved, device; ``unknown`` is compared against reserved (and says so).
An ``oom`` row is checked the other way: the estimate must not call it a fit. A
``device_map`` row whose value is a published total divided by the GPU count (``DERIVED``
in its notes) is compared with the mean of the cards' estimates, not the fullest card's.
Torch-free.
"""

from __future__ import annotations

import csv
import statistics
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from vramplan.errors import VramplanError
from vramplan.gpus import resolve_gpu
from vramplan.memory import estimate
from vramplan.memory.phases import Estimate
from vramplan.models import load_model
from vramplan.setup import Setup, make_setup
from vramplan.tables import tables_dir
from vramplan.units import GB, GIB

COLUMNS = (
    "id source model method quant precision lora_rank lora_alpha lora_targets trainable_extra optimizer seq_len "
    "micro_batch grad_accum grad_checkpointing attention num_gpus parallel offload gpu measured_value "
    "measured_unit measurement outcome notes"
).split()
#: fields every row needs before it can be estimated.
REQUIRED = ("model", "method", "precision", "seq_len", "micro_batch", "num_gpus", "attention")
UNITS = {"GiB": GIB, "GB": GB}
TIERS = {"allocated": "allocated", "reserved": "reserved", "device": "device", "unknown": "reserved"}
EMBEDDING_NAMES = {"embeddings", "embed_tokens", "wte", "word_embeddings", "tok_embeddings"}
HEAD_NAMES = {"lm_head", "output"}


def published_csv() -> Path:
    return tables_dir() / "measured" / "published.csv"


class Comparison(BaseModel):
    """One row: the estimate at the measured tier, or why it was left out."""

    model_config = ConfigDict(frozen=True)
    id: str
    source: str
    model: str
    method: str
    outcome: str
    measurement: str
    tier: str
    measured_bytes: int | None
    estimate_bytes: int | None
    error_pct: float | None
    fits: bool | None = None
    excluded: str = ""
    notes: str = ""

    @property
    def counted(self) -> bool:
        return not self.excluded and self.outcome == "ok" and self.error_pct is not None


class Stats(BaseModel):
    model_config = ConfigDict(frozen=True)
    rows: int
    median_abs_pct: float | None
    p90_abs_pct: float | None
    within_10pct: int
    underestimates: int
    worst_under_pct: float | None


class Summary(BaseModel):
    model_config = ConfigDict(frozen=True)
    rows: int
    compared: int
    excluded: int
    overall: Stats
    by_source: dict[str, Stats]
    by_method: dict[str, Stats]
    oom_rows: int
    oom_predicted_fit: list[str]
    unknown_vs_reserved: int


def read_rows(path: Path) -> list[dict[str, str]]:
    """The CSV's rows; a missing column is an error naming it."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise VramplanError(
                    "csv", f"{path} lacks column(s) {', '.join(missing)}; the schema is {','.join(COLUMNS)}"
                )
            return [{k: (v or "").strip() for k, v in row.items() if k} for row in reader]
    except OSError as exc:
        raise VramplanError("csv", f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise VramplanError("csv", f"{path} is not UTF-8 text") from None


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
    if method == "inference":
        fields.update(method="inference", quant=quant, grad_checkpointing=False)
        return make_setup(**fields)
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
    return make_setup(**fields)


def _model(row: dict[str, str], base: Path) -> str:
    m = row["model"]
    if m.endswith(".json") or "/" in m and (base / m).exists():
        return str((base / m).resolve())
    return m


def row_estimate(row: dict[str, str], base: Path) -> Estimate:
    spec = load_model(_model(row, base))
    setup = row_setup(row)
    return estimate(spec, setup)


def exclusion(row: dict[str, str]) -> str:
    """Why a row is left out of the statistics ('' when it is counted)."""
    notes = row.get("notes", "")
    if notes.lower().startswith("excluded:"):
        return notes[len("excluded:") :].strip().split(". ")[0].rstrip(".")
    blank = [f for f in REQUIRED if not row.get(f)]
    if row.get("method") in ("full", "freeze", "lora", "qlora") and not row.get("grad_checkpointing"):
        blank.append("grad_checkpointing")
    if blank:
        return "not stated: " + ", ".join(dict.fromkeys(blank))
    if row.get("outcome", "ok") == "ok" and not row.get("measured_value"):
        return "no measured value"
    return ""


def compare(row: dict[str, str], base: Path) -> Comparison:
    """Estimate one row at the tier its measurement names."""
    kind = row.get("measurement") or "unknown"
    if kind not in TIERS:
        raise VramplanError("measurement", f"row {row['id']}: {kind!r}; allowed: {', '.join(TIERS)}")
    outcome = row.get("outcome") or "ok"
    if outcome not in ("ok", "oom"):
        raise VramplanError("outcome", f"row {row['id']}: {outcome!r}; allowed: ok, oom")
    tier = TIERS[kind]
    measured = None
    if row.get("measured_value"):
        unit = row.get("measured_unit") or "GiB"
        if unit not in UNITS:
            raise VramplanError("measured_unit", f"row {row['id']}: {unit!r}; allowed: GiB, GB")
        try:
            measured = int(float(row["measured_value"]) * UNITS[unit])
        except ValueError:
            raise VramplanError(
                "measured_value", f"row {row['id']}: {row['measured_value']!r} is not a number"
            ) from None
    common: dict[str, Any] = dict(
        id=row["id"],
        source=row.get("source", "").split(" ")[0],
        model=row.get("model", ""),
        method=row.get("method", ""),
        outcome=outcome,
        measurement=kind,
        tier=tier,
        measured_bytes=measured,
        notes=row.get("notes", ""),
    )
    why = exclusion(row)
    if why and outcome == "ok":
        return Comparison(**common, estimate_bytes=None, error_pct=None, excluded=why)
    try:
        est = row_estimate(row, base)
    except VramplanError as exc:
        raise VramplanError(exc.field, f"row {row['id']}: {exc.message}") from None
    value = _tier(est, tier)
    if est.cards and "DERIVED" in row.get("notes", ""):
        value = sum(_tier(card, tier) for card in est.cards) // len(est.cards)
    fits = None
    if outcome == "oom" and row.get("gpu"):
        fits = est.device_bytes <= resolve_gpu(row["gpu"]).memory_bytes
    err = None if measured is None or outcome != "ok" else 100.0 * (value - measured) / measured
    return Comparison(**common, estimate_bytes=value, error_pct=err, fits=fits, excluded=why)


def _tier(est: Any, tier: str) -> int:
    return {"allocated": est.allocated_bytes, "reserved": est.reserved_bytes, "device": est.device_bytes}[tier]


def compare_csv(path: Path) -> list[Comparison]:
    rows = read_rows(path)
    seen: set[str] = set()
    out = []
    for row in rows:
        if not row.get("id"):
            raise VramplanError("id", f"{path}: a row has no id")
        if row["id"] in seen:
            raise VramplanError("id", f"{path}: id {row['id']!r} appears twice")
        seen.add(row["id"])
        out.append(compare(row, path.parent))
    return out


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    k = (len(s) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def stats(rows: list[Comparison]) -> Stats:
    errs = [r.error_pct for r in rows if r.counted and r.error_pct is not None]
    if not errs:
        return Stats(
            rows=0, median_abs_pct=None, p90_abs_pct=None, within_10pct=0, underestimates=0, worst_under_pct=None
        )
    abs_ = [abs(e) for e in errs]
    unders = [e for e in errs if e < 0]
    return Stats(
        rows=len(errs),
        median_abs_pct=statistics.median(abs_),
        p90_abs_pct=_pct(abs_, 0.9),
        within_10pct=sum(a <= 10 for a in abs_),
        underestimates=len(unders),
        worst_under_pct=min(unders) if unders else None,
    )


def summarize(rows: list[Comparison]) -> Summary:
    counted = [r for r in rows if r.counted]
    by_source = {s: stats([r for r in counted if r.source == s]) for s in sorted({r.source for r in counted})}
    by_method = {m: stats([r for r in counted if r.method == m]) for m in sorted({r.method for r in counted})}
    ooms = [r for r in rows if r.outcome == "oom" and not r.excluded]
    return Summary(
        rows=len(rows),
        compared=len(counted),
        excluded=sum(1 for r in rows if r.excluded),
        overall=stats(counted),
        by_source=by_source,
        by_method=by_method,
        oom_rows=len(ooms),
        oom_predicted_fit=[r.id for r in ooms if r.fits and not r.excluded],
        unknown_vs_reserved=sum(1 for r in counted if r.measurement == "unknown"),
    )
