"""Estimates against measured GPU runs: any CSV in the published-measurements schema.

The schema (``tables/measured/published.csv`` and a user's own runs):

    id, source, trainer, trainer_version, model, method, quant, precision, lora_rank,
    lora_alpha, lora_targets, trainable_extra, optimizer, seq_len, lengths, micro_batch,
    grad_accum, grad_checkpointing, attention, num_gpus, parallel, offload, gpu,
    measured_value, measured_unit, measurement, outcome, settings, notes

``trainer`` names the program that ran the measured step (blank: the plain transformers
Trainer loop, ``hf``); each row is estimated under that trainer's policy
(``framework(trainer).policy(setup)``, as ``vramplan plan --trainer`` does), and a row from a
program vramplan has no policy for (torchtune, Unsloth) is excluded with that reason, never
estimated under another trainer's. ``trainer_version`` is the version the source states, or
the release series its date implies (``0`` for TRL before 2025), blank when neither is known;
it is used where a trainer's step changed across releases (:func:`policy_trainer`: TRL 0.x ran
the transformers Trainer's step). ``lengths`` says how the batches' lengths ran: fixed (every
sample at ``seq_len``), packed, or variable (padded to each batch's longest, ``seq_len`` the
cap: the reserved and device tiers then hold the shorter batches' cached loss chains,
memory/lengths.py); blank is fixed. The three columns may be absent from a user's CSV (read
as blank), as may ``settings``: Setup fields the other columns do not hold (:func:`row_settings`).
``model`` is a catalog name or a path to a config.json relative to the CSV. ``measurement``
picks the tier compared: allocated, reserved, device; ``unknown`` is compared against reserved.
An ``oom`` row is checked the other way: the estimate must not call it a fit on its ``gpu``
(``tight`` is allowed: vramplan/verdict.py); each row on a named card gets the verdict and the
phase of its peak. A ``device_map`` row whose value is a published total divided by the GPU
count (``DERIVED`` in its notes) is compared with the mean of the cards' estimates.

A row that cannot be compared stays in the result, left out of the statistics with a short
code and a reason naming the field (``unknown gpu 'v100-32g'``): its notes start with
``excluded:``, a field the estimate needs is blank, a value is not one the schema allows
(an unknown quant, model, model_type or GPU), a number is nonsense (a measured value that
is not a positive finite number), or the row's shape or id is broken. Only a problem with
the file as a whole (missing, unreadable, not UTF-8, not a CSV of this schema, too large)
is an error. Torch-free. The comparison rows and their statistics are :mod:`vramplan.comparison`.
"""

from __future__ import annotations

import csv
import io
import math
from collections import Counter
from pathlib import Path
from typing import Any, NamedTuple

from vramplan.comparison import Comparison, Stats, Summary, stats, summarize
from vramplan.errors import VramplanError, closest, cut, one_line, shown
from vramplan.frameworks import framework
from vramplan.gpus import gpu_catalog, resolve_gpu
from vramplan.memory import estimate
from vramplan.memory.lengths import LENGTHS
from vramplan.memory.phases import Estimate
from vramplan.models import load_model
from vramplan.row_setup import COLUMNS, row_setup
from vramplan.row_setup import row_settings as row_settings  # re-exported
from vramplan.row_trainer import NO_POLICY as NO_POLICY  # re-exported
from vramplan.row_trainer import policy_trainer, row_trainer, trainer_problem
from vramplan.setup import ATTENTIONS, METHODS, OFFLOADS, OPTIMIZERS, PARALLELS, PRECISIONS, QUANTS
from vramplan.tables import tables_dir
from vramplan.units import GB, GIB
from vramplan.verdict import needed, verdict

#: the comparison's data and statistics live in vramplan.comparison; validate reads them from here too
__all__ = ["COLUMNS", "Comparison", "Stats", "Summary", "compare", "compare_csv", "read_rows", "stats", "summarize"]

#: columns a user's CSV may leave out (read as blank: the plain transformers Trainer loop)
OPTIONAL_COLUMNS = ("trainer", "trainer_version", "lengths", "settings")
#: fields every row needs before it can be estimated.
REQUIRED = ("model", "method", "precision", "seq_len", "micro_batch", "num_gpus", "attention")
UNITS = {"GiB": GIB, "GB": GB}
TIERS = {"allocated": "allocated", "reserved": "reserved", "device": "device", "unknown": "reserved"}
OUTCOMES = ("ok", "oom")
#: the values each enumerated column allows (blank takes the default where one exists)
ALLOWED: dict[str, tuple[str, ...]] = {
    "method": METHODS,
    "quant": QUANTS,
    "precision": PRECISIONS,
    "optimizer": OPTIMIZERS,
    "attention": ATTENTIONS,
    "parallel": PARALLELS,
    "offload": OFFLOADS,
    "grad_checkpointing": ("true", "false"),
    "lengths": LENGTHS,
    "measured_unit": tuple(UNITS),
    "measurement": tuple(TIERS),
    "outcome": OUTCOMES,
}
#: a CSV larger than this, or with more rows, is refused as a whole: 55 times published.csv's
#: rows, and a run over the bound takes seconds (about 1 ms a row), not minutes
MAX_CSV_BYTES = 16 << 20
MAX_CSV_ROWS = 10_000
#: a measured per-GPU peak outside [1 MiB, 16 TiB] is not a GPU measurement
MIN_MEASURED_BYTES = 1 << 20
MAX_MEASURED_BYTES = 1 << 44


def published_csv() -> Path:
    return tables_dir() / "measured" / "published.csv"


class Excluded(Exception):
    """A row left out: ``code`` groups it in the summary, ``reason`` names the field and value."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def _cut(reason: str, limit: int = 400) -> str:
    """A reason no longer than ``limit`` (a planner message may quote a long value whole)."""
    return cut(one_line(reason), limit)


class Record(NamedTuple):
    """One CSV record: its first line, its fields, and what is wrong with its shape ('' if nothing)."""

    line: int
    row: dict[str, str]
    shape: str


def read_records(path: Path) -> list[Record]:
    """The CSV's records, bounded in size; a problem with the file as a whole raises one
    VramplanError (field ``csv``); a record with more or fewer fields than the header is
    returned with its shape problem."""
    where = one_line(str(path))
    try:
        with path.open("rb") as fh:
            data = fh.read(MAX_CSV_BYTES + 1)
    except OSError as exc:
        raise VramplanError("csv", f"cannot read {where}: {exc.strerror or exc}") from None
    if len(data) > MAX_CSV_BYTES:
        raise VramplanError("csv", f"{where} is larger than {MAX_CSV_BYTES >> 20} MiB; split it")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise VramplanError("csv", f"{where} is not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    schema = ",".join(COLUMNS)
    if not text.strip():
        raise VramplanError("csv", f"{where} is empty; its header must be {schema}")
    reader = csv.DictReader(io.StringIO(text, newline=""), strict=True)
    try:
        header = reader.fieldnames or []
    except csv.Error as exc:
        raise VramplanError("csv", f"{where} is not a readable CSV (its header: {one_line(str(exc))})") from None
    missing = [c for c in COLUMNS if c not in header and c not in OPTIONAL_COLUMNS]
    if len(missing) == len(COLUMNS) - len(OPTIONAL_COLUMNS):
        raise VramplanError(
            "csv", f"{where} is not a CSV of the published-measurements schema: its header must be {schema}"
        )
    if missing:
        raise VramplanError("csv", f"{where} lacks column(s) {', '.join(missing)}; the schema is {schema}")
    out: list[Record] = []
    end = reader.line_num  # the last line of the record read last
    while True:
        try:
            raw = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:  # bad quoting, a field over the csv module's limit: this record only
            raw = None
            problem = f"malformed row: {one_line(str(exc))}"
        if len(out) >= MAX_CSV_ROWS:
            raise VramplanError("csv", f"{where} has more than {MAX_CSV_ROWS} rows; split it")
        if raw is None:
            out.append(Record(end + 1, {}, problem))
            continue
        extra = raw.pop(None, None)  # type: ignore[call-overload]
        short = sum(v is None for v in raw.values())
        shape = ""
        if extra is not None or short:
            shape = f"malformed row: {len(header) + len(extra or ()) - short} fields, the header has {len(header)}"
        values = [v for v in (*raw.values(), *(extra or ())) if v]
        breaks = sum(v.count("\n") + v.count("\r") - v.count("\r\n") for v in values)  # quoted line breaks
        end = reader.line_num
        out.append(Record(end - breaks, {k: (v or "").strip() for k, v in raw.items()}, shape))
    return out


def read_rows(path: Path) -> list[dict[str, str]]:
    """The CSV's rows; a missing column is an error naming it."""
    return [r.row for r in read_records(path)]


def _model(row: dict[str, str], base: Path) -> str:
    m = row["model"]
    if m.endswith(".json") or "/" in m and (base / m).exists():
        return str((base / m).resolve())
    return m


def trainer_exclusion(row: dict[str, str]) -> Excluded | None:
    """Why ``row`` cannot be estimated for the program that produced it (None when it can)."""
    problem = trainer_problem(row)
    return Excluded(*problem) if problem else None


def row_estimate(row: dict[str, str], base: Path, trainer: str | None = None) -> Estimate:
    """The estimate of ``row`` under the policy of the trainer that ran it; ``trainer`` names
    another policy in its place (calibrate.py's one stated approximation)."""
    why = trainer_exclusion(row) if trainer is None else None
    if why is not None:
        raise VramplanError("trainer", why.reason)
    try:
        spec = load_model(_model(row, base), hub=False)  # a gate answers the same on every machine
    except OSError as exc:  # probing the name as a path: too long, not a directory, ...
        raise VramplanError("model", f"unknown model {shown(row['model'])}: {exc.strerror or exc}") from None
    setup = row_setup(row)
    policy = framework(trainer or policy_trainer(row)).policy(setup)
    return estimate(spec, setup, policy=policy, nvlink=_nvlink(row))


def _nvlink(row: dict[str, str]) -> bool:
    """Whether the row's card talks over NVLink (NCCL's buffers, memory/overhead.py); False for a
    card the catalog does not know, which compare() excludes on its own."""
    name = row.get("gpu", "")
    if not name or name.strip().lower() == "auto":
        return False
    try:
        return resolve_gpu(name).nvlink
    except VramplanError:
        return False


def _unknown(field: str, value: str) -> Excluded:
    return Excluded(f"unknown {field}", f"unknown {field} {shown(value)}; allowed: {', '.join(ALLOWED[field])}")


def _measured_bytes(row: dict[str, str]) -> int | None:
    """The measured value in bytes; nonsense (not a number, not finite, not positive, not a
    plausible per-GPU peak) raises Excluded naming it."""
    text = row.get("measured_value", "")
    if not text:
        return None
    unit = row.get("measured_unit") or "GiB"
    try:
        value = float(text)
    except ValueError:
        raise Excluded("invalid measured_value", f"invalid measured_value {shown(text)}: not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise Excluded(
            "invalid measured_value", f"invalid measured_value {shown(text)}: must be a positive finite number"
        )
    measured = value * UNITS[unit]  # compared as a float: 1e300 GiB is past the largest float
    if not MIN_MEASURED_BYTES <= measured <= MAX_MEASURED_BYTES:
        raise Excluded(
            "invalid measured_value",
            f"invalid measured_value {shown(text)} {unit}: a per-GPU peak lies in 1 MiB..16 TiB",
        )
    return int(measured)


def _check(row: dict[str, str], trainer: bool = True) -> None:
    """The checks that need no model: notes, blanks, enumerated values, the measured number,
    and (``trainer``) a trainer with a policy. Raises Excluded for the first one that fails."""
    for field in COLUMNS:
        value = row.get(field, "")
        if field not in ("source", "notes") and not value.isprintable():
            raise Excluded(f"invalid {field}", f"invalid {field} {shown(value)}: a control character")
    notes = row.get("notes", "")
    if notes.lower().startswith("excluded:"):
        raise Excluded("excluded in notes", notes[len("excluded:") :].strip().split(". ")[0].rstrip("."))
    outcome = row.get("outcome") or "ok"
    blank = [f for f in REQUIRED if not row.get(f)]
    if row.get("method") in ("full", "freeze", "lora", "qlora") and not row.get("grad_checkpointing"):
        blank.append("grad_checkpointing")
    if outcome == "oom" and not row.get("gpu"):
        blank.append("gpu")
    if blank:
        raise Excluded("not stated", "not stated: " + ", ".join(dict.fromkeys(blank)))
    for field, allowed in ALLOWED.items():
        value = row.get(field, "")
        if field == "grad_checkpointing":
            value = value.lower()
        if value and value not in allowed:
            raise _unknown(field, row.get(field, ""))
    if outcome == "ok" and not row.get("measured_value"):
        raise Excluded("no measured value", "no measured value")
    _measured_bytes(row)
    why = trainer_exclusion(row) if trainer else None
    if why is not None:
        raise why


def exclusion(row: dict[str, str], trainer: bool = True) -> str:
    """Why a row is left out of the statistics before any model is loaded ('' when it may be
    counted); ``trainer=False`` leaves out the check that its trainer has a policy."""
    try:
        _check(row, trainer)
    except Excluded as exc:
        return exc.reason
    return ""


def _from_error(exc: VramplanError, row: dict[str, str]) -> Excluded:
    """A bad-input error raised while planning one row, as that row's exclusion."""
    message = one_line(exc.message)
    if exc.field == "model" and message.startswith("unknown model"):
        return Excluded("unknown model", message)
    if exc.field == "model" and message.startswith("no config.json"):
        return Excluded("unknown model", f"unknown model {shown(row.get('model', ''))}: {message}")
    if exc.field == "model" or exc.field not in row:
        # the config itself: unreadable, its model_type, a dimension (the config key is named)
        key = "" if exc.field == "model" else f"{exc.field}: "
        return Excluded("bad model config", f"model {shown(row.get('model', ''))}: {key}{message}")
    return Excluded(f"invalid {exc.field}", f"invalid {exc.field}: {message}")


def _gpu_bytes(row: dict[str, str]) -> int:
    """The card's memory; a name the catalog does not know raises Excluded."""
    name = row["gpu"]
    if name.strip().lower() != "auto":  # a measured row names its card; auto would read this machine's
        try:
            return resolve_gpu(name).memory_bytes
        except VramplanError:
            pass
    cards = gpu_catalog().values()
    near = closest(name, sorted({c.key for c in cards} | {c.name for c in cards}))
    hint = f"; closest: {', '.join(near)}" if near else ""
    raise Excluded("unknown gpu", f"unknown gpu {shown(name)}{hint} ('vramplan gpus' lists all)")


def _measured_or_none(row: dict[str, str]) -> int | None:
    try:
        return _measured_bytes(row)
    except (Excluded, KeyError):
        return None


def compare(row: dict[str, str], base: Path, line: int | None = None) -> Comparison:
    """Estimate one row at the tier its measurement names; a row that cannot be compared
    comes back excluded with its code and reason. Only a bad-input error (VramplanError)
    from the row's values becomes an exclusion: anything else is a bug and propagates."""
    kind = row.get("measurement") or "unknown"
    outcome = row.get("outcome") or "ok"
    common: dict[str, Any] = dict(
        id=row.get("id", ""),
        line=line,
        source=row.get("source", "").split(" ")[0],
        trainer=row_trainer(row),
        trainer_version=row.get("trainer_version", ""),
        model=row.get("model", ""),
        method=row.get("method", ""),
        outcome=outcome,
        measurement=kind,
        tier=TIERS.get(kind, ""),
        notes=row.get("notes", ""),
    )
    try:
        _check(row)
        measured = _measured_bytes(row)
        tier = TIERS[kind]
        try:
            est = row_estimate(row, base)
        except VramplanError as exc:
            raise _from_error(exc, row) from None
        card = _gpu_bytes(row) if outcome == "oom" or row.get("gpu") else None
        said = verdict(needed(est), card) if card is not None else None
    except Excluded as exc:
        return Comparison(
            **common,
            measured_bytes=_measured_or_none(row),
            estimate_bytes=None,
            error_pct=None,
            code=exc.code,
            reason=_cut(exc.reason),
        )
    value = _tier(est, tier)
    if est.cards and "DERIVED" in row.get("notes", ""):
        value = sum(_tier(card, tier) for card in est.cards) // len(est.cards)
    err = None if measured is None or outcome != "ok" else 100.0 * (value - measured) / measured
    return Comparison(
        **common,
        measured_bytes=measured,
        estimate_bytes=value,
        error_pct=err,
        fits=None if said is None else said != "does not fit",
        verdict=said,
        device_bytes=est.device_bytes,
        phase=est.phase,
    )


def _tier(est: Any, tier: str) -> int:
    return {"allocated": est.allocated_bytes, "reserved": est.reserved_bytes, "device": est.device_bytes}[tier]


def compare_csv(path: Path) -> list[Comparison]:
    """Every record of the CSV compared or excluded, in file order."""
    seen: dict[str, int] = {}
    out = []
    for rec in read_records(path):
        row, why = rec.row, None
        if rec.shape:
            why = Excluded("malformed row", rec.shape)
        elif not row.get("id"):
            why = Excluded("blank id", f"blank id (line {rec.line})")
        elif row["id"] in seen:
            why = Excluded("duplicate id", f"duplicate id {shown(row['id'])} (first on line {seen[row['id']]})")
        else:
            seen[row["id"]] = rec.line
        if why is None:
            out.append(compare(row, path.parent, rec.line))
        else:
            out.append(
                Comparison(
                    id=row.get("id", ""),
                    line=rec.line,
                    source=row.get("source", "").split(" ")[0],
                    model=row.get("model", ""),
                    method=row.get("method", ""),
                    outcome=row.get("outcome", ""),
                    measurement=row.get("measurement", ""),
                    tier="",
                    measured_bytes=None,
                    estimate_bytes=None,
                    error_pct=None,
                    code=why.code,
                    reason=_cut(why.reason),
                    notes=row.get("notes", ""),
                )
            )
    return out


def require_usable(rows: list[Comparison], path: Path) -> None:
    """Refuse (one VramplanError) a CSV none of whose rows could be compared."""
    if any(not r.excluded for r in rows):
        return
    if not rows:
        raise VramplanError("csv", f"{one_line(str(path))} has a header but no rows")
    codes = Counter(r.code for r in rows)
    first = rows[0]
    raise VramplanError(
        "csv",
        f"{one_line(str(path))}: none of its {len(rows)} rows can be compared "
        f"({', '.join(f'{c} {n}' for c, n in codes.most_common())}); "
        f"row {shown(first.id) if first.id else '(no id)'} on line {first.line}: {first.reason}",
    )
