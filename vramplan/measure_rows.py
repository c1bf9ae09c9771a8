"""What ``vramplan measure -- COMMAND`` records: the hook's per-rank JSON (vramplan/measure_hook.py)
as rows of the published-measurements schema (``tables/measured/README.md``), one per rank.

The schema's columns come from the run's Setup (:func:`setup_columns`; the fields without a
column go in ``settings``, so :func:`vramplan.row_setup.row_setup` reads the same Setup back) and
from the hook: the trainer its Trainer subclass names and that trainer's version, the card
(torch's device name, matched in the catalog), the peak at the tier ``measurement`` names, the
outcome. Columns after the schema's (:data:`EXTRA`) keep the rest: the rank, all three tiers in
GiB, the phase of the peak and each phase's peaks, the optimizer steps seen, the command's exit
status, torch's and transformers' versions. The Setup of an emitted folder is the
``vramplan-setup.json`` that ``vramplan MODEL --emit T --out DIR`` writes beside the trainer's
files (:func:`setup_document`). Torch-free.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from vramplan.errors import VramplanError, cut, one_line, shown
from vramplan.gpus import resolve_gpu
from vramplan.row_setup import COLUMNS
from vramplan.setup import Setup, make_setup
from vramplan.units import GIB

#: the file beside an emitted trainer's files that says what was planned (``--from DIR`` reads it)
SETUP_FILE = "vramplan-setup.json"
SETUP_FORMAT = "vramplan-setup/1"
#: columns after the schema's (``vramplan validate`` reads the schema's and keeps these)
EXTRA = (
    "rank",
    "world_size",
    "allocated_gib",
    "reserved_gib",
    "device_gib",
    "peak_phase",
    "phases_gib",
    "steps",
    "exit_status",
    "torch_version",
    "transformers_version",
    "date",
)
MEASUREMENTS = ("allocated", "reserved", "device")
#: phases in the order a run passes them (measure_hook.py)
PHASE_ORDER = ("load", "run", "train", "eval", "save", "other")
#: Setup fields no row column or setting carries (a ds_config.json and a lengths file are files,
#: named in the notes)
NOT_IN_ROW = ("deepspeed_config", "lengths_file")


def setup_document(model: str, source: str, gpu: str, trainer: str, setup: Setup) -> str:
    """The JSON of ``vramplan-setup.json``: what the emitted files run, for ``measure --from``
    (a model named by a config.json path is recorded by its absolute path)."""
    doc = {
        "format": SETUP_FORMAT,
        "model": os.path.abspath(source) if source and os.path.exists(source) else model,
        "source": source,
        "gpu": gpu,
        "trainer": trainer,
        "setup": setup.model_dump(mode="json"),
    }
    return json.dumps(doc, indent=1, sort_keys=True) + "\n"


def read_setup_document(folder: str) -> dict[str, Any]:
    """The planned run of an emitted folder (or of the ``vramplan-setup.json`` named): model,
    gpu, trainer and its Setup's fields; refused in one line (field ``from``) when absent."""
    path = Path(folder)
    file = path if path.is_file() else path / SETUP_FILE
    try:
        doc = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise VramplanError(
            "from",
            f"{one_line(folder)} has no {SETUP_FILE}: give the folder 'vramplan MODEL --emit T --out DIR' wrote,"
            " or MODEL and the setup flags",
        ) from None
    except (OSError, ValueError) as exc:
        raise VramplanError("from", f"cannot read {one_line(str(file))}: {one_line(str(exc))}") from None
    if not isinstance(doc, dict) or doc.get("format") != SETUP_FORMAT or not isinstance(doc.get("setup"), dict):
        raise VramplanError("from", f"{one_line(str(file))} is not a {SETUP_FORMAT} document")
    return doc


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return str(value)


def setup_columns(setup: Setup) -> dict[str, str]:
    """The schema's Setup columns and ``settings`` (every other field that differs from its default)."""
    s = setup
    lora = s.is_lora
    cols = {
        "method": s.method,
        "quant": s.quant,
        "precision": s.precision,
        "lora_rank": str(s.lora_rank) if lora else "",
        "lora_alpha": _value(s.lora_alpha) if lora else "",
        "lora_targets": s.lora_targets if lora else "",
        "trainable_extra": _value(s.trainable_extra) if lora else "",
        "optimizer": s.optimizer,
        "seq_len": str(s.seq_len),
        "lengths": s.lengths,
        "micro_batch": str(s.micro_batch),
        "grad_accum": str(s.grad_accum),
        "grad_checkpointing": _value(s.grad_checkpointing),
        "attention": s.attention,
        "num_gpus": str(s.num_gpus),
        "parallel": s.parallel,
        "offload": s.offload,
    }
    settings = []
    for name, info in Setup.model_fields.items():
        if name in COLUMNS or name in NOT_IN_ROW:
            continue
        value = getattr(s, name)
        if value != info.default:
            settings.append(f"{name}={_value(value)}")
    if s.lengths_file is not None and not s.avg_tokens:
        # a row carries the lengths' mean, not the file (named in the notes): what validate draws from
        from vramplan.memory.lengths import mean_of

        settings.append(f"avg_tokens={round(mean_of(s) or s.seq_len)}")
    cols["settings"] = ";".join(settings)
    return cols


def resolve_setup(doc: dict[str, Any] | None, given: dict[str, Any]) -> Setup:
    """The run's Setup: the emitted folder's (``doc``) with the flags given over it."""
    fields = dict(doc["setup"]) if doc else {}
    fields.update(given)
    return make_setup(**fields)


def card_key(name: str) -> str:
    """The catalog key of a device name torch reports ('' when the catalog has no such card)."""
    try:
        return resolve_gpu(re.sub(r"\s+MIG\s.*$", "", name)).key
    except VramplanError:
        return ""


def _gib(n: int | None) -> str:
    return "" if n is None else f"{n / GIB:.3f}"


def peaks(record: dict[str, Any]) -> dict[str, Any]:
    """The rank's peaks over phases and devices: allocated, reserved, device (NVML, None without
    it) and its scope, the phase and device of the reserved peak, and each phase's three peaks."""
    out: dict[str, Any] = {"allocated": 0, "reserved": 0, "device": None, "scope": "", "phase": "", "gpu": ""}
    per_phase: dict[str, tuple[int, int, int | None]] = {}
    phases = record.get("phases") or {}
    for phase in sorted(phases, key=lambda p: PHASE_ORDER.index(p) if p in PHASE_ORDER else len(PHASE_ORDER)):
        devices = phases[phase] or {}
        a = max((int(v.get("allocated", 0)) for v in devices.values()), default=0)
        r = max((int(v.get("reserved", 0)) for v in devices.values()), default=0)
        nv = [int(v["nvml"]) for v in devices.values() if v.get("nvml")]
        d = max(nv) if nv else None
        per_phase[phase] = (a, r, d)
        out["allocated"] = max(out["allocated"], a)
        if r > out["reserved"]:
            out["reserved"], out["phase"] = r, phase
            out["gpu"] = max(devices, key=lambda k: int(devices[k].get("reserved", 0)))
        if d is not None and (out["device"] is None or d > out["device"]):
            out["device"] = d
            out["scope"] = next(v.get("nvml_scope", "") for v in devices.values() if v.get("nvml") == d)
    out["phases"] = per_phase
    return out


def _phases_text(per_phase: dict[str, tuple[int, int, int | None]]) -> str:
    return "; ".join(f"{p} {_gib(a)}/{_gib(r)}/{_gib(d) or '-'}" for p, (a, r, d) in per_phase.items())


def _oom_text(oom: dict[str, Any]) -> str:
    said = {k: f"{v / GIB:.2f} GiB" for k, v in oom.items() if isinstance(v, int)}
    parts = [f"{k.replace('_', ' ')} {v}" for k, v in said.items()]
    return "CUDA out of memory" + (f" ({', '.join(parts)})" if parts else "")


def make_rows(records: list[dict[str, Any]], run: dict[str, Any]) -> list[dict[str, str]]:
    """One row per rank (records sorted by rank, then pid). ``run`` holds the parent's side:
    ``id`` (prefix), ``source``, ``model``, ``setup``, ``trainer``, ``gpu``, ``measurement``,
    ``exit_status``, ``date``, ``notes`` (said on every row), ``num_gpus_given``."""
    rows = []
    records = sorted(records, key=lambda r: (r.get("rank") is None, r.get("rank") or 0, r.get("pid") or 0))
    world = max((int(r.get("world_size") or 1) for r in records), default=1)
    setup: Setup = run["setup"]
    if not run.get("num_gpus_given") and world > setup.world_size and setup.parallel not in ("none", "device_map"):
        setup = make_setup(**{**setup.model_dump(), "num_gpus": max(1, world // setup.num_nodes)})
    columns = setup_columns(setup)
    for rec in records:
        rows.append(_row(rec, run, setup, columns, world))
    return rows


def _row(rec: dict[str, Any], run: dict[str, Any], setup: Setup, columns: dict[str, str], world: int) -> dict[str, str]:
    p = peaks(rec)
    notes: list[str] = []
    rank = rec.get("rank")
    used = rec.get("devices") or {}
    device_info = (rec.get("devices") or {}).get(p["gpu"], {})
    name = str(device_info.get("name", ""))
    gpu = card_key(name) if name else ""
    if name:
        total = device_info.get("total_memory")
        notes.append(f"{name}" + (f", torch capacity {total / GIB:.2f} GiB" if total else ""))
    if not gpu:
        gpu = run.get("gpu") or ""
        if name and gpu:
            notes.append(f"{shown(name)} is not in the catalog: the card given, {gpu}")
    tier = run["measurement"]
    value = {"allocated": p["allocated"], "reserved": p["reserved"], "device": p["device"]}[tier]
    if tier == "device" and value is None:
        tier, value = "reserved", p["reserved"]
        notes.append("no NVML reading (pip install nvidia-ml-py): the reserved peak recorded instead")
    if len(used) > 1:
        notes.append(f"{len(used)} devices in one process (device_map): the largest, cuda:{p['gpu']}")
    if p["device"] is not None and p["scope"] == "card":
        notes.append("NVML: the whole card's use (the process was not in its list: another PID namespace)")
    outcome = rec.get("outcome") or "ok"
    steps = int(rec.get("steps") or 0)
    ooms = sum(int(d.get("num_ooms", 0)) for d in used.values())
    if outcome in ("ok", "error") and ooms and run["exit_status"] != 0:
        # the run caught its out-of-memory error and exited with a failure of its own (sys.exit(1))
        outcome = "oom"
        notes.append(f"the allocator raised {ooms} out-of-memory error(s) and the command failed")
    excluded = ""
    if outcome == "oom":
        notes.append(_oom_text(rec.get("oom") or {}) + f" after {steps} optimizer steps")
        capacity = (rec.get("oom") or {}).get("total_capacity")
        if not gpu and capacity:
            notes.append(f"the card is not named: torch's capacity {capacity / GIB:.2f} GiB")
    elif outcome != "ok":
        what = {"killed": "killed by SIGTERM", "interrupted": "interrupted (Ctrl-C)"}.get(outcome, "died")
        error = f" ({one_line(rec.get('error', ''))})" if rec.get("error") and outcome == "error" else ""
        if steps == 0:
            excluded = f"excluded: {what}{error} before its first optimizer step, so no step's peak was reached. "
        else:
            notes.append(f"{what}{error} after {steps} optimizer steps: the peak of the steps run")
    elif steps == 0 and setup.method != "inference":
        notes.append("no optimizer step seen")
    if ooms and outcome != "oom":
        notes.append(f"{ooms} out-of-memory error(s) raised and caught by the run")
    if run.get("trainer") and rec.get("trainer") and rec["trainer"] != run["trainer"]:
        notes.append(f"planned for {run['trainer']}, ran {rec['trainer']} ({rec.get('trainer_class', '')})")
    if world > 1 and setup.parallel == "none":
        excluded = excluded or f"excluded: {world} ranks ran and the setup names no multi-GPU layout (--parallel). "
    elif world != (1 if setup.parallel == "device_map" else setup.world_size):  # device_map: one process
        notes.append(f"WORLD_SIZE {world}, the setup says {setup.world_size} GPUs")
    if setup.deepspeed_config is not None:
        notes.append(f"DeepSpeed config {setup.deepspeed_config.source}")
    if setup.lengths_file is not None:
        notes.append(f"sample lengths from {setup.lengths_file.source} ({setup.lengths_file.samples:,} samples)")
    versions = rec.get("versions") or {}
    ident = f"{run['id']}-r{rank}" if rank is not None else f"{run['id']}-p{rec.get('pid')}"
    row = {
        "id": ident,
        "source": run["source"],
        "trainer": rec.get("trainer") or run.get("trainer") or "",
        "trainer_version": str(rec.get("trainer_version") or ""),
        "model": run["model"],
        **columns,
        "gpu": gpu,
        "measured_value": _gib(value) if value else "",
        "measured_unit": "GiB",
        "measurement": tier,
        "outcome": "oom" if outcome == "oom" else "ok",
        "notes": cut(excluded + "; ".join([*run.get("notes", []), *notes]), 2000),
        "rank": "" if rank is None else str(rank),
        "world_size": str(rec.get("world_size") or ""),
        "allocated_gib": _gib(p["allocated"]),
        "reserved_gib": _gib(p["reserved"]),
        "device_gib": _gib(p["device"]),
        "peak_phase": p["phase"],
        "phases_gib": _phases_text(p["phases"]),
        "steps": str(steps),
        "exit_status": str(run["exit_status"]),
        "torch_version": str(versions.get("torch", "")),
        "transformers_version": str(versions.get("transformers", "")),
        "date": run["date"],
    }
    return {k: one_line(v) if k != "notes" else v.replace("\n", " ") for k, v in row.items()}
